"""The PyTorch reference of the benchmarks and the parity tool: the same LeNet and ResNet-18, Flax weights copied in.

Imported only when ``torch`` is installed (the optional ``.[bench]`` extra).
The modules mirror :mod:`crp_jax.models` layer for layer, so a copied
network computes the same logits (``tests/test_benchmarks.py`` checks it, and
``python -m tools.parity`` before each comparison).

Layouts: Flax convolution kernels are HWIO and torch's are OIHW; Flax dense
kernels are ``(in, out)`` and torch's ``(out, in)``; and LeNet flattens its
last feature map in NHWC order in Flax but NCHW in torch, so the first dense
kernel's rows are permuted from ``(h, w, c)`` to ``(c, h, w)``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class LeNet(nn.Module):
  """:class:`crp_jax.models.LeNet` in torch (NCHW)."""

  def __init__(self, num_classes: int = 10):
    super().__init__()
    self.conv0 = nn.Conv2d(1, 32, 5, padding=2)
    self.conv1 = nn.Conv2d(32, 64, 5, padding=2)
    self.dense0 = nn.Linear(7 * 7 * 64, 1024)
    self.dense1 = nn.Linear(1024, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.max_pool2d(F.relu(self.conv0(x)), 2)
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.relu(self.dense0(x.flatten(1)))
    return self.dense1(x)


def _bn(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
  """:class:`crp_jax.models.resnet.BasicBlock` in torch."""

  def __init__(self, in_channels: int, features: int, stride: int):
    super().__init__()
    self.conv0 = nn.Conv2d(in_channels, features, 3, stride, 1, bias=False)
    self.bn0 = _bn(features)
    self.conv1 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.bn1 = _bn(features)
    self.shortcut = None
    if stride != 1 or in_channels != features:
      self.shortcut = nn.Sequential(nn.Conv2d(in_channels, features, 1, stride, bias=False), _bn(features))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn0(self.conv0(x)))
    y = self.bn1(self.conv1(y))
    return F.relu((x if self.shortcut is None else self.shortcut(x)) + y)


class ResNet18(nn.Module):
  """:class:`crp_jax.models.ResNet18` (CIFAR variant) in torch."""

  def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256, 512)):
    super().__init__()
    self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn = _bn(widths[0])
    blocks, channels = [], widths[0]
    for stage, features in enumerate(widths):
      for block in range(2):
        blocks.append(BasicBlock(channels, features, 2 if stage > 0 and block == 0 else 1))
        channels = features
    self.blocks = nn.Sequential(*blocks)
    self.dense = nn.Linear(channels, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn(self.conv(x)))
    x = self.blocks(x)
    return self.dense(x.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- weights


def _t(a: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(a, np.float32, order="C"))  # a writable copy


def _load_conv2d(conv: nn.Conv2d, p: dict[str, Any]) -> None:
  conv.weight.data.copy_(_t(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1))))  # HWIO -> OIHW
  if conv.bias is not None:
    conv.bias.data.copy_(_t(p["bias"]))


def _load_dense(dense: nn.Linear, p: dict[str, Any]) -> None:
  dense.weight.data.copy_(_t(np.asarray(p["kernel"]).T))
  dense.bias.data.copy_(_t(p["bias"]))


def _load_batch_norm(bn: nn.BatchNorm2d, p: dict[str, Any], stats: dict[str, Any]) -> None:
  bn.weight.data.copy_(_t(p["scale"]))
  bn.bias.data.copy_(_t(p["bias"]))
  bn.running_mean.copy_(_t(stats["mean"]))
  bn.running_var.copy_(_t(stats["var"]))


def lenet_from_flax(variables: dict[str, Any]) -> LeNet:
  """A torch :class:`LeNet` holding the Flax LeNet ``variables``."""
  p = variables["params"]
  net = LeNet(num_classes=np.asarray(p["Dense_1"]["bias"]).shape[0])
  _load_conv2d(net.conv0, p["Conv_0"])
  _load_conv2d(net.conv1, p["Conv_1"])
  kernel = np.asarray(p["Dense_0"]["kernel"])                 # rows in (h, w, c) order
  h = w = 7
  c = kernel.shape[0] // (h * w)
  kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)  # -> (c, h, w)
  _load_dense(net.dense0, {"kernel": kernel, "bias": p["Dense_0"]["bias"]})
  _load_dense(net.dense1, p["Dense_1"])
  return net


def resnet18_from_flax(variables: dict[str, Any]) -> ResNet18:
  """A torch :class:`ResNet18` holding the Flax ResNet-18 ``variables`` (params and BN stats)."""
  p, s = variables["params"], variables["batch_stats"]
  net = ResNet18(num_classes=np.asarray(p["Dense_0"]["bias"]).shape[0])
  _load_conv2d(net.conv, p["Conv_0"])
  _load_batch_norm(net.bn, p["BatchNorm_0"], s["BatchNorm_0"])
  for i, block in enumerate(net.blocks):
    bp, bs = p[f"BasicBlock_{i}"], s[f"BasicBlock_{i}"]
    _load_conv2d(block.conv0, bp["Conv_0"])
    _load_batch_norm(block.bn0, bp["BatchNorm_0"], bs["BatchNorm_0"])
    _load_conv2d(block.conv1, bp["Conv_1"])
    _load_batch_norm(block.bn1, bp["BatchNorm_1"], bs["BatchNorm_1"])
    if block.shortcut is not None:
      _load_conv2d(block.shortcut[0], bp["Conv_2"])
      _load_batch_norm(block.shortcut[1], bp["BatchNorm_2"], bs["BatchNorm_2"])
  _load_dense(net.dense, p["Dense_0"])
  return net


def to_nchw(x: Any) -> torch.Tensor:
  """NHWC array -> contiguous NCHW float32 tensor."""
  return _t(np.transpose(np.asarray(x, np.float32), (0, 3, 1, 2)))


# ----------------------------------------------------------------------------- steps


def make_train_step(net: nn.Module, lr: float = 1e-3) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """An eager step: cross-entropy, backward, Adam, on an input already perturbed on the host."""
  opt = torch.optim.Adam(net.parameters(), lr=lr)
  net.train()

  def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss

  return step


def torch_labels(y: Any) -> torch.Tensor:
  """Integer labels as the int64 tensor torch's losses take."""
  return torch.from_numpy(np.asarray(y, np.int64))


def make_pgd_at_step(net: nn.Module, *, eps: float, step_size: float, num_steps: int,
                     lr: float = 1e-3) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """Madry's PGD-AT step: ``torchattacks.PGD`` (random start, eval mode) finds x', then CE at x', Adam."""
  import torchattacks  # pylint: disable=g-import-not-at-top
  attack = torchattacks.PGD(net, eps=eps, alpha=step_size, steps=num_steps, random_start=True)
  train_step = make_train_step(net, lr)

  def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x_adv = attack(x, y)   # torchattacks runs the model in eval mode and restores train mode
    return train_step(x_adv, y)

  return step


def make_attack(name: str, net: nn.Module, *, eps: float, step_size: float,
                num_steps: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """torchattacks' FGSM, PGD (random start) or APGD-CE (L∞, one restart) on ``net``."""
  import torchattacks  # pylint: disable=g-import-not-at-top
  net.eval()
  if name == "fgsm":
    return torchattacks.FGSM(net, eps=eps)
  if name == "pgd":
    return torchattacks.PGD(net, eps=eps, alpha=step_size, steps=num_steps, random_start=True)
  if name == "apgd":
    return torchattacks.APGD(net, norm="Linf", eps=eps, steps=num_steps, n_restarts=1, loss="ce", seed=0)
  raise ValueError(f"unknown attack {name!r}")


def autoattack_standard(net: nn.Module, *, eps: float, steps: int = 100, num_targets: int = 9,
                        queries: int = 5000, seed: int = 0) -> dict[str, Any]:
  """torchattacks' APGD-CE, APGD-T, FAB-T and Square (L∞, one run each) at AutoAttack's budgets, in its order.

  ``torchattacks.AutoAttack(version="standard")`` builds the same four with
  10 steps (the original AutoAttack uses 100), so they are built one by
  one; ``torchattacks.MultiAttack(list(...values()))`` chains them as
  AutoAttack does. ``n_classes = num_targets + 1``: APGDT and FAB attack
  ``n_classes − 1`` targets and use it for nothing else.
  """
  import torchattacks  # pylint: disable=g-import-not-at-top
  net.eval()
  common = dict(norm="Linf", eps=eps, seed=seed, n_restarts=1)
  return {
      "apgd-ce": torchattacks.APGD(net, steps=steps, loss="ce", **common),
      "apgd-t": torchattacks.APGDT(net, steps=steps, n_classes=num_targets + 1, **common),
      "fab-t": torchattacks.FAB(net, steps=steps, multi_targeted=True, n_classes=num_targets + 1, **common),
      "square": torchattacks.Square(net, n_queries=queries, **common),
  }


@torch.no_grad()
def smoothing_counts(net: nn.Module, x: torch.Tensor, *, sigma: float, num: int, batch_size: int,
                     num_classes: int) -> torch.Tensor:
  """Randomized smoothing's Monte Carlo counts as Cohen et al.'s reference code samples them.

  For each example of ``x`` (NCHW), ``num`` copies ``x + σ·N(0, I)`` in
  batches of ``batch_size``; returns ``(B, classes)`` int64 counts of the
  argmax class.
  """
  net.eval()
  out = torch.zeros(len(x), num_classes, dtype=torch.int64, device=x.device)
  for b in range(len(x)):
    left = num
    while left > 0:
      m = min(batch_size, left)
      batch = x[b:b + 1].repeat(m, 1, 1, 1)
      top = net(batch + sigma * torch.randn_like(batch)).argmax(1)
      out[b] += torch.bincount(top, minlength=num_classes)
      left -= m
  return out
