"""tools.compare_results: a refactor's before/after check must see a changed number and ignore timings."""

from tools import compare_results


def _result(acc, seconds=1.0, extra=None):
  evaluation = {"paper": {"accuracy": {"fgsm": acc}}, **(extra or {})}
  return {"evaluation": evaluation, "training": {"steps": 10, "seconds": seconds}, "command": "x"}


def test_identical_numbers_pass_whatever_the_timings_and_added_fields():
  lines, shared, added = compare_results.diff(_result(0.5), _result(0.5, seconds=9.0, extra={"new": 1}))
  assert lines == [] and shared == 2 and added == 1


def test_a_changed_or_missing_number_is_reported():
  lines, _, _ = compare_results.diff(_result(0.5), _result(0.25))
  assert lines == ["evaluation.paper.accuracy.fgsm: 0.5 -> 0.25"]
  before = {"crp": _result(0.5), "standard": _result(0.5)}
  lines, _, _ = compare_results.diff(before, {"crp": _result(0.5)})
  assert lines == ["standard.evaluation.paper.accuracy.fgsm: 0.5 -> '<absent>'",
                   "standard.steps: 10 -> '<absent>'"]
