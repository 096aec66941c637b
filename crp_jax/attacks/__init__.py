"""Compiled adversarial attacks (placeholder; filled in by the attacks work)."""
