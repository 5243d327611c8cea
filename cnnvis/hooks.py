"""Hooks, only ever inside context managers that remove them in ``finally``.

- ``model_state_guard(model)``: on exit the model's train/eval flags,
  ``requires_grad`` flags and hook dicts are as on entry (hooks added inside are
  removed, flags restored) and the weights were not modified in place (checked
  through each tensor's version counter; a change raises).
- ``capture(module, stop=...)``: records a module's output; with ``stop=True``
  the forward pass ends right after that module (nothing downstream is computed).
- ``relu_rule(model, rule)``: overrides the backward of every ``nn.ReLU`` module
  with the deconvnet or the guided-backprop rule (ANCHOR-NOTES: one rule apart).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# The per-module hook dicts of torch.nn.Module (all of them, so that a leaked hook of any kind is caught).
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")

RULES = ("deconvnet", "guided")


@contextlib.contextmanager
def model_state_guard(model: nn.Module, *, eval_mode: bool = False, frozen: bool = False) -> Iterator[nn.Module]:
    """Restore mode, requires_grad and hook dicts of ``model`` on exit; verify its weights are untouched.

    ``eval_mode=True`` switches the model to eval inside the block (attributions
    are computed without dropout and with BN running statistics); ``frozen=True``
    turns ``requires_grad`` off inside (no weight gradients are computed: faster).
    """
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    hooks = {(m, d): dict(getattr(m, d)) for m in model.modules() for d in _HOOK_DICTS if hasattr(m, d)}
    versions = {id(t): t._version for t in (*model.parameters(), *model.buffers())}
    if eval_mode:
        model.eval()
    if frozen:
        for p in flags:
            p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for (m, d), before in hooks.items():
            current = getattr(m, d)
            for key in [k for k in current if k not in before]:
                del current[key]
        changed = [n for n, t in (*model.named_parameters(), *model.named_buffers())
                   if id(t) in versions and t._version != versions[id(t)]]
        if changed:
            raise RuntimeError(f"attribution modified model tensors in place: {', '.join(changed[:5])}")


class _StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a capture hook to end the forward pass early."""


@dataclass
class Captured:
    """What ``capture`` recorded: the module's output of the last forward pass."""

    output: torch.Tensor | None = None
    stopped: bool = field(default=False)


@contextlib.contextmanager
def capture(module: nn.Module, *, stop: bool = False) -> Iterator[Captured]:
    """Record ``module``'s output; with ``stop=True`` abort the forward pass after it.

    With ``stop=True`` call the model inside ``run_until(model, x, captured)``.
    """
    box = Captured()

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        box.output = out
        if stop:
            box.stopped = True
            raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def run_until(model: nn.Module, x: torch.Tensor, box: Captured) -> torch.Tensor:
    """Run ``model(x)`` under a ``capture(..., stop=True)``; return the captured output."""
    try:
        model(x)
    except _StopForward:
        pass
    if box.output is None:
        raise ValueError("the captured layer was not reached by the model's forward pass; is it a module of this model?")
    return box.output


class _RuleReLU(torch.autograd.Function):
    """ReLU whose backward is the deconvnet or guided-backprop rule (x: the ReLU input)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, guided: bool) -> torch.Tensor:
        ctx.guided = guided
        if guided:
            ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        if ctx.guided:  # g_in = relu(g_out) · [x > 0]
            (x,) = ctx.saved_tensors
            return g.clamp(min=0) * (x > 0), None
        return g.clamp(min=0), None  # deconvnet: g_in = relu(g_out), whatever the forward sign


@contextlib.contextmanager
def relu_rule(model: nn.Module, rule: str | None) -> Iterator[None]:
    """Inside the block every ``nn.ReLU`` of ``model`` back-propagates with ``rule``.

    ``rule``: "deconvnet", "guided", or None (plain gradient, no hooks).
    """
    if rule is None:
        yield
        return
    if rule not in RULES:
        raise ValueError(f"rule = {rule!r}: unknown; allowed: {', '.join(RULES)}")
    guided = rule == "guided"

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> torch.Tensor:
        return _RuleReLU.apply(inp[0], guided)  # same forward value, the rule's backward

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                if m.inplace:
                    raise ValueError("relu_rule needs non-inplace nn.ReLU modules (DESIGN.md rule 4)")
                handles.append(m.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
