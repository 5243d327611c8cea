"""Hooks, only ever inside context managers that remove them in ``finally``.

- ``model_state_guard(model)``: on exit the model's train/eval flags,
  ``requires_grad`` flags, ``inplace`` flags and hook dicts are as on entry
  (hooks added inside are removed, flags restored) and the weights were not
  modified in place (checked through each tensor's version counter; a change
  raises). Inside, in-place ``nn.ReLU`` modules compute out of place, so a
  captured layer output is never overwritten by the ReLU that follows it.
- ``relus_out_of_place(model)``: just that switch, restored in ``finally``.
- ``capture(module, stop=...)``: records a module's output; with ``stop=True``
  the forward pass ends right after that module (nothing downstream is computed).
- ``relu_rule(model, rule)``: overrides the backward of every ReLU of ``model``
  with the deconvnet or the guided-backprop rule: ``nn.ReLU`` modules (in-place
  ones too, a module called several times per forward on each call) and the
  functional ``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms
  called while ``model`` runs its forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# The per-module hook dicts of torch.nn.Module (all of them, so that a leaked hook of any kind is caught).
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")

RULES = ("deconvnet", "guided")


@contextlib.contextmanager
def model_state_guard(model: nn.Module, *, eval_mode: bool = False, frozen: bool = False) -> Iterator[nn.Module]:
    """Restore mode, requires_grad, ``inplace`` flags and hook dicts of ``model`` on exit; verify its weights are untouched.

    ``eval_mode=True`` switches the model to eval inside the block (attributions
    are computed without dropout and with BN running statistics); ``frozen=True``
    turns ``requires_grad`` off inside (no weight gradients are computed: faster).
    In-place ``nn.ReLU`` modules compute out of place inside the block (same
    values; the module's input and output are then distinct tensors).
    """
    modes = {m: m.training for m in model.modules()}
    inplace = {m: m.inplace for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)}
    flags = {p: p.requires_grad for p in model.parameters()}
    hooks = {(m, d): dict(getattr(m, d)) for m in model.modules() for d in _HOOK_DICTS if hasattr(m, d)}
    versions = {id(t): t._version for t in (*model.parameters(), *model.buffers())}
    if eval_mode:
        model.eval()
    if frozen:
        for p in flags:
            p.requires_grad_(False)
    try:
        for m in inplace:
            if isinstance(m, nn.ReLU):
                m.inplace = False
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
        for m, flag in inplace.items():
            m.inplace = flag
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


@contextlib.contextmanager
def relus_out_of_place(model: nn.Module) -> Iterator[list[nn.ReLU]]:
    """Inside the block every in-place ``nn.ReLU`` of ``model`` computes out of place; yields the switched modules.

    The values are the same; what changes is that the module's input is no
    longer overwritten by its output (a forward hook then sees both). The flags
    are set back in ``finally``.
    """
    switched = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    try:
        for m in switched:
            m.inplace = False
        yield switched
    finally:
        for m in switched:
            m.inplace = True


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block (BN running statistics, no dropout); the previous mode is restored."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


class _StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a capture hook to end the forward pass early."""


@dataclass
class Captured:
    """What ``capture`` recorded in the last forward pass: the module's (first) input and its output."""

    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


@contextlib.contextmanager
def capture(module: nn.Module, *, stop: bool = False) -> Iterator[Captured]:
    """Record ``module``'s input and output; with ``stop=True`` abort the forward pass after it.

    With ``stop=True`` call the model through ``run_until(model, x, captured)``.
    """
    box = Captured()

    def hook(_m: nn.Module, inp: tuple[Any, ...], out: torch.Tensor) -> None:
        box.input = inp[0] if inp else None
        box.output = out
        if stop:
            raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def run_until(model: nn.Module, x: torch.Tensor, box: Captured) -> torch.Tensor:
    """Run ``model(x)`` under a ``capture(..., stop=True)``; return the captured output."""
    box.output = None
    try:
        model(x)
    except _StopForward:
        pass
    if box.output is None:
        raise ValueError("the captured layer was not reached by the model's forward pass; is it a module of this model?")
    return box.output


@dataclass
class RuleSwitch:
    """The ReLU backward rule in force; may be changed between backward passes of one forward graph."""

    rule: str | None


class _RuleReLU(torch.autograd.Function):
    """ReLU whose backward follows ``switch.rule`` at backward time.

    Inputs: the ReLU module's input x and its already computed output relu(x)
    (returned as a view, so the forward costs nothing; the mask x > 0 is read
    from the output: relu(x) > 0 ⇔ x > 0). The gradient goes to x only.
    None: the plain gradient g·[x > 0]; "guided": relu(g)·[x > 0]; "deconvnet": relu(g).
    Supports ``autograd.grad(..., is_grads_batched=True)`` (vmap over the backward).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, out: torch.Tensor, switch: RuleSwitch) -> torch.Tensor:
        return out.view_as(out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _x, out, switch = inputs
        ctx.switch = switch
        ctx.save_for_backward(out)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        rule = ctx.switch.rule
        if rule == "deconvnet":
            return g.clamp(min=0), None, None
        (out,) = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(g, out, 0)  # g·[x > 0] in one fused pass (ReLU's own backward)
        if rule == "guided":
            g = g.clamp_(min=0)
        return g, None, None


_RELU = (F.relu, torch.relu, torch.Tensor.relu)  # F.relu(x, inplace=True) arrives as F.relu with kwargs
_RELU_INPLACE = (torch.relu_, torch.Tensor.relu_)  # F.relu_ is torch.relu_


class _FunctionalReLUs(TorchFunctionMode):
    """Gives functional ReLUs the rule of ``switch``; pushed only while the model runs its forward.

    Every torch call of the forward passes through ``__torch_function__``; a
    ReLU called outside an ``nn.ReLU`` module's forward (those are hooked
    separately, ``in_module`` counts them) whose input needs a gradient gets a
    ``_RuleReLU`` node. An in-place call (``x.relu_()``, ``F.relu(x, inplace=True)``)
    still overwrites ``x``: with the rule's output, through an autograd-recorded
    copy, so the caller's tensor and the returned one both carry the rule.
    """

    def __init__(self, switch: RuleSwitch):
        super().__init__()
        self.switch = switch
        self.depth = 0  # nesting of the model's own forward (re-entrant calls)
        self.in_module = 0  # nesting of nn.ReLU forwards

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        inplace = func in _RELU_INPLACE or (func is F.relu and bool(kwargs.get("inplace", False)))
        if self.in_module or not (inplace or func in _RELU):
            return func(*args, **kwargs)
        x = args[0] if args else kwargs["input"]
        if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad):
            return func(*args, **kwargs)
        if not inplace:
            return _RuleReLU.apply(x, func(*args, **kwargs).detach(), self.switch)
        ruled = _RuleReLU.apply(x, torch.relu(x.detach()), self.switch)
        return x.copy_(ruled)

    def enter_model(self, _m: nn.Module, _inp: Any) -> None:
        if self.depth == 0:
            self.__enter__()
        self.depth += 1

    def exit_model(self, _m: nn.Module, _inp: Any, _out: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.__exit__(None, None, None)

    def enter_relu(self, _m: nn.Module, _inp: Any) -> None:
        self.in_module += 1

    def exit_relu(self, _m: nn.Module, _inp: Any, _out: Any) -> None:
        self.in_module -= 1

    def close(self) -> None:
        """Pop the mode if a forward was left by an exception the always-called hooks did not see."""
        if self.depth > 0:
            self.depth = 0
            self.__exit__(None, None, None)


@contextlib.contextmanager
def relu_rule(model: nn.Module, rule: str | None) -> Iterator[RuleSwitch]:
    """Inside the block every ReLU of ``model`` back-propagates with ``switch.rule``.

    ``rule``: "deconvnet", "guided", or None (the plain gradient). The yielded
    switch may change the rule between two backward passes of the same forward.

    Which ReLUs: every ``nn.ReLU`` module (in-place ones compute out of place
    inside the block, their flag is restored on exit; a module called several
    times in one forward, like torchvision's ``BasicBlock.relu``, gets one rule
    node per call), and every ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` (and
    in-place form) called while ``model(...)`` runs, outside those modules.
    Other activations (ReLU6, LeakyReLU, clamp) keep their plain gradient.
    """
    if rule is not None and rule not in RULES:
        raise ValueError(f"rule = {rule!r}: unknown; allowed: {', '.join(RULES)}, None")
    switch = RuleSwitch(rule)
    functional = _FunctionalReLUs(switch)

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        return _RuleReLU.apply(inp[0], out.detach(), switch)  # the module's own output, the switch's backward

    with contextlib.ExitStack() as stack:
        stack.enter_context(relus_out_of_place(model))
        handles: list[torch.utils.hooks.RemovableHandle] = []
        stack.callback(lambda: [h.remove() for h in handles])
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                handles += [m.register_forward_pre_hook(functional.enter_relu),
                            m.register_forward_hook(functional.exit_relu, always_call=True),
                            m.register_forward_hook(hook)]
        handles += [model.register_forward_pre_hook(functional.enter_model),
                    model.register_forward_hook(functional.exit_model, always_call=True)]
        stack.callback(functional.close)
        yield switch
