"""Filter importance: the norm of the gradient of a class score w.r.t. each filter's weights.

Paper 3 §3.2.1/§3.2.3: for an input x and a class c, the importance of filter f
of a conv layer is ‖∂y_c(x)/∂W_f‖₂ (W_f: the O-th slice of the weight, I×kh×kw;
the bias is not part of it). Averaged over the inputs of a class it is the
class-wise relevance; averaged over classes, the filter's overall importance.

Per-sample gradients without one backward per image. In eval mode the score of
image n depends on image n only, so ∂(Σ_n y_c(x_n))/∂Z_n = ∂y_c(x_n)/∂Z_n for
every conv output Z (the "score-sum trick": one backward per batch and class
gives per-sample output gradients). The per-sample weight gradient is then the
product of that output gradient (O×P, P output positions) with the unfolded
layer input (P×I·kh·kw) — what conv's own weight backward computes, only
without summing over the batch. ``tests/test_importance.py`` proves it equal to
a loop of one ``autograd.grad`` per image and to ``torch.func.vmap(grad)``.

``check_gradients`` validates it by finite differences in float64 (central
differences, every perturbed weight restored, plus the directional derivative
along each filter's unit gradient, which must equal the importance itself).
Paper 3's own check used ε = 1e-9 on float32 weights, never restored them and
compared different images.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis import ConfigError
from cnnvis.hooks import eval_mode

log = logging.getLogger(__name__)


def _no_progress(iterable: Iterable, **_: object) -> Iterable:
    return iterable


# --------------------------------------------------------------------------- model plumbing


def conv_layer_names(model: nn.Module, layers: Sequence[str] | None = None) -> tuple[str, ...]:
    """The conv layers to analyse: ``layers`` checked against the model, or every ``nn.Conv2d``."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not layers:
        if not convs:
            raise ConfigError("model has no nn.Conv2d layer; filter importance needs conv layers")
        return tuple(convs)
    for name in layers:
        if name not in convs:
            raise ConfigError(f"prune.layers: {name!r} is not a conv layer of the model; conv layers: {', '.join(convs)}")
        m = convs[name]
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ConfigError(f"prune.layers: {name!r} uses padding {m.padding!r}/{m.padding_mode}; only numeric zero padding is supported")
    return tuple(layers)


@contextlib.contextmanager
def _capture(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Record (input, output) of each named conv during a forward; hooks removed on exit."""
    store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    modules = dict(model.named_modules())
    handles = []
    try:
        for name in layers:
            def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, name: str = name) -> None:
                store[name] = (inp[0], out)

            handles.append(modules[name].register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


def _unfold(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Input patches of ``conv``: N×I×H×W → N×(I·kh·kw)×P, the columns its weight multiplies."""
    return F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)


def _targets(target: int | torch.Tensor, n: int) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=torch.long)
    return t.expand(n) if t.ndim == 0 else t


# --------------------------------------------------------------------------- the attribution


class FilterImportance:
    """Per-input filter importance, Captum-style: ``FilterImportance(model, layers).attribute(x, target=y)``.

    ``layers``: qualified conv names (default: every ``nn.Conv2d``). The model
    is left unchanged (mode, requires_grad, hooks, weights, ``.grad``).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None):
        self.model = model
        self.layers = conv_layer_names(model, layers)
        modules = dict(model.named_modules())
        self.convs: dict[str, nn.Conv2d] = {n: modules[n] for n in self.layers}

    def _output_grads(self, inputs: torch.Tensor, classes: Callable[[int], torch.Tensor]
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]:
        """One forward, one backward per target class (K of them) for the whole batch.

        ``classes(C)`` gives the targets, K×N class indices, once the number of classes C is known.

        Returns logits (N×C), the unfolded conv inputs (N×I·kh·kw×P) and the
        per-sample gradients of the selected scores at each conv output (K tensors N×O×P).
        """
        x = inputs.detach().requires_grad_(True)  # puts every conv output in the graph, even with frozen weights
        with eval_mode(self.model), torch.enable_grad(), _capture(self.model, self.layers) as store:
            logits = self.model(x)
            outs = [store[n][1] for n in self.layers]
            t = classes(logits.shape[1])  # K×N
            grads: list[list[torch.Tensor]] = [[] for _ in self.layers]
            for k, tk in enumerate(t):
                # Σ_n y_{t_kn}(x_n): its gradient at sample n's conv output is sample n's own (eval mode).
                # One plain backward per class: cheaper on CPU than one vmap-batched backward (measured).
                score = logits.gather(1, tk[:, None]).sum()
                for i, gi in enumerate(torch.autograd.grad(score, outs, retain_graph=k < len(t) - 1)):
                    grads[i].append(gi.flatten(2))
            unfolded = {n: _unfold(self.convs[n], store[n][0].detach()) for n in self.layers}
        return logits.detach(), unfolded, {n: grads[i] for i, n in enumerate(self.layers)}

    def _grouped(self, name: str, u: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split channels into conv groups: u → N×G×(I/G·kh·kw)×P, g → N×G×(O/G)×P."""
        groups = self.convs[name].groups
        n, k, p = u.shape
        o = g.shape[1]
        return u.view(n, groups, k // groups, p), g.view(n, groups, o // groups, p)

    def _norms(self, name: str, u: torch.Tensor, g: Sequence[torch.Tensor], method: str | None = None) -> torch.Tensor:
        """‖per-sample weight gradient‖ per filter: K×N×O for the K per-class output gradients ``g`` (N×O×P each),
        by the cheaper of two exact forms.

        direct: G = g·uᵀ (K·N·O·P·Kw multiply-adds); Gram: ‖G_o‖² = g_o·(uᵀu)·g_oᵀ
        (N·P²·Kw once + K·N·O·P²), cheaper for wide layers and many classes.
        ``method`` ("direct" | "gram") forces one form (tests compare them).
        """
        n, kw, p = u.shape
        groups = self.convs[name].groups
        kw, og = kw // groups, g[0].shape[1] // groups
        direct, gram = len(g) * og * kw * p, p * p * kw + len(g) * og * p * p
        use_gram = method == "gram" or (method is None and gram < direct)
        gm = None
        out = []
        for gk in g:  # one class at a time: the K×N×O×P block never exists at once
            ug, gg = self._grouped(name, u, gk)
            if not use_gram:
                sq = torch.matmul(gg, ug.transpose(-1, -2)).square().sum(-1)  # N×G×(O/G)
            else:
                if gm is None:
                    gm = torch.matmul(ug.transpose(-1, -2), ug)  # N×G×P×P, shared by all classes
                sq = (torch.matmul(gg, gm) * gg).sum(-1).clamp_min(0)
            out.append(sq.sqrt().reshape(n, groups * og))
        return torch.stack(out)

    def attribute(self, inputs: torch.Tensor, target: int | torch.Tensor) -> dict[str, torch.Tensor]:
        """Importance of every filter for each input's target class: {layer: N×O}."""
        t = _targets(target, len(inputs))
        _, u, g = self._output_grads(inputs, lambda _c: t[None])
        return {n: self._norms(n, u[n], g[n])[0] for n in self.layers}

    def attribute_all(self, inputs: torch.Tensor, classes: Sequence[int] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Importance for every class at once: (logits N×C, {layer: N×K×O}) for K = ``classes`` (default all)."""
        def targets(c: int) -> torch.Tensor:
            cls = torch.arange(c) if classes is None else torch.as_tensor(list(classes), dtype=torch.long)
            return cls[:, None].expand(len(cls), len(inputs))

        logits, u, g = self._output_grads(inputs, targets)
        return logits, {n: self._norms(n, u[n], g[n]).transpose(0, 1).contiguous() for n in self.layers}

    def gradients(self, inputs: torch.Tensor, target: int | torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-sample weight gradients themselves: {layer: N×O×(I/G)×kh×kw} (for volumes and checks)."""
        t = _targets(target, len(inputs))
        _, u, g = self._output_grads(inputs, lambda _c: t[None])
        out = {}
        for n in self.layers:
            ug, gg = self._grouped(n, u[n], g[n][0])
            grad = torch.matmul(gg, ug.transpose(-1, -2))  # N×G×(O/G)×(I/G·kh·kw)
            out[n] = grad.reshape(len(inputs), *self.convs[n].weight.shape)
        return out


# --------------------------------------------------------------------------- aggregation over a dataset


@dataclass
class ImportanceStats:
    """Importance over a labelled set, aggregated by (correct?, true class, target class).

    ``sums[layer]``: 2×C×C×O, Σ importance over inputs of true class a that were
    wrongly (0) / correctly (1) classified, w.r.t. target class c. ``counts``: 2×C.
    ``own[layer]``: N×O, each input's importance for its own class (histograms).
    """

    layers: tuple[str, ...]
    num_classes: int
    sums: dict[str, torch.Tensor]
    counts: torch.Tensor
    own: dict[str, torch.Tensor]
    predictions: torch.Tensor
    labels: torch.Tensor

    def mean(self, correct: bool | None = None) -> dict[str, torch.Tensor]:
        """{layer: C_true×C_target×O} mean importance; ``correct`` selects right/wrong inputs only."""
        idx = [0, 1] if correct is None else [int(correct)]
        cnt = self.counts[idx].sum(0).clamp_min(1).to(torch.float64)
        return {n: (s[idx].sum(0).to(torch.float64) / cnt[:, None, None]).float() for n, s in self.sums.items()}

    def relevance(self) -> dict[str, torch.Tensor]:
        """Class-wise relevance (paper 3 §3.2.3): {layer: C×O}, inputs of class c w.r.t. class c."""
        return {n: torch.diagonal(m, dim1=0, dim2=1).T.contiguous() for n, m in self.mean().items()}

    def overall(self) -> dict[str, torch.Tensor]:
        """Overall importance: class-wise relevance averaged over the classes present. {layer: O}."""
        present = self.counts.sum(0) > 0
        return {n: r[present].mean(0) for n, r in self.relevance().items()}

    def other_class(self) -> dict[str, torch.Tensor]:
        """Importance w.r.t. class c for inputs of the other classes (the paper's "different class" grid). {layer: C×O}."""
        total = self.counts.sum(0).to(torch.float64)
        out = {}
        for n, s in self.sums.items():
            by_true = s.sum(0).to(torch.float64)  # C_true×C_target×O sums
            diag = torch.diagonal(by_true, dim1=0, dim2=1).T  # C×O
            others = by_true.sum(0) - diag
            denom = (total.sum() - total).clamp_min(1)
            out[n] = (others / denom[:, None]).float()
        return out


def compute_importance(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, layers: Sequence[str] | None = None,
                       batch_size: int = 250, progress: Callable[..., Iterable] = _no_progress) -> ImportanceStats:
    """Importance of every filter of ``layers`` for every input and every class, aggregated.

    ``images``: normalized float N×C×H×W; ``labels``: N. One forward and C backward
    passes per batch (C = number of classes), never one per image.
    """
    fi = FilterImportance(model, layers)
    if len(images) != len(labels) or len(images) == 0:
        raise ConfigError(f"compute_importance: {len(images)} images and {len(labels)} labels; need the same, non-zero number")
    sums: dict[str, torch.Tensor] = {}
    own: dict[str, list[torch.Tensor]] = {n: [] for n in fi.layers}
    preds: list[torch.Tensor] = []
    counts = None
    c = 0
    for start in progress(range(0, len(images), batch_size), desc="importance", unit="batch"):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        logits, imp = fi.attribute_all(x)
        c = logits.shape[1]
        if counts is None:
            counts = torch.zeros(2, c, dtype=torch.long)
            sums = {n: torch.zeros(2, c, c, imp[n].shape[2], dtype=torch.float64) for n in fi.layers}
        pred = logits.argmax(1)
        right = (pred == y).long()
        counts.index_put_((right, y), torch.ones_like(y), accumulate=True)
        for n in fi.layers:
            v = imp[n].to(torch.float64)  # B×C×O
            sums[n].index_put_((right, y), v, accumulate=True)
            own[n].append(imp[n][torch.arange(len(y)), y])
        preds.append(pred)
    assert counts is not None
    return ImportanceStats(fi.layers, c, sums, counts, {n: torch.cat(v) for n, v in own.items()}, torch.cat(preds), labels.clone())


# --------------------------------------------------------------------------- finite-difference validation


@dataclass(frozen=True)
class GradientCheck:
    """Finite differences against the analytic per-sample gradients (float64).

    ``weights``: per layer, the largest relative error over sampled weights×images;
    ``directional``: per layer, the largest relative error of the derivative along
    each filter's unit gradient against the filter's importance (gradient norm).
    """

    weights: dict[str, float]
    directional: dict[str, float]
    checked: dict[str, dict[str, int]]
    max_rel_error: float
    epsilon: float


def _rel_err(a: torch.Tensor, b: torch.Tensor, floor: float) -> tuple[torch.Tensor, int]:
    """|a−b|/max(|a|,|b|); pairs where both are below ``floor`` (exact zeros: dead filters, unused weights) are skipped."""
    scale = torch.maximum(a.abs(), b.abs())
    keep = scale > floor
    return ((a - b).abs()[keep] / scale[keep]), int((~keep).sum())


def _central(step: Callable[[float], tuple[torch.Tensor, torch.Tensor]], h: float, y0: torch.Tensor, kinks: list[int],
             *, tries: int = 4, tol: float = 1e-7) -> torch.Tensor:
    """Central difference (y(+h) − y(−h))/2h, with h shrunk ×10 while a ReLU/max-pool kink lies within ±h.

    A ReLU network is piecewise linear in any one weight (and along any one
    filter direction), so on a linear piece the two one-sided differences agree to
    rounding; when they do not, a kink is inside the step and the central
    difference is meaningless at any precision (seen at h = 1e-4 on conv1).
    """
    for attempt in range(tries):
        up, down = step(h)
        fwd, bwd = (up - y0) / h, (y0 - down) / h
        # allowed gap: relative tol plus what float64 rounding of y alone can produce at this h
        noise = 64 * torch.finfo(y0.dtype).eps * (y0.abs() + up.abs() + down.abs()) / h
        if bool(((fwd - bwd).abs() <= tol * torch.maximum(fwd.abs(), bwd.abs()) + noise).all()) or attempt == tries - 1:
            return (up - down) / (2 * h)
        kinks[0] += 1
        h /= 10
    raise AssertionError("unreachable")


@torch.no_grad()
def check_gradients(model: nn.Module, images: torch.Tensor, target: int | torch.Tensor, *, layers: Sequence[str] | None = None,
                    weights_per_layer: int = 16, filters_per_layer: int | None = None, epsilon: float = 1e-4,
                    zero_floor: float = 1e-10, seed: int = 0) -> GradientCheck:
    """Validate ``FilterImportance`` by central differences on a float64 copy of ``model``.

    For ``weights_per_layer`` random weights of every layer: (y(w+h) − y(w−h))/2h with
    h = ε·max(1, |w|), the weight restored exactly after each step, for every image at
    once (the same images for both passes). For every filter (or ``filters_per_layer``
    random ones) and every image: the derivative along u = ∇_{W_f}/‖∇_{W_f}‖, which
    equals ‖∇_{W_f}‖, the importance. ``model`` itself is never touched.
    """
    m64 = copy.deepcopy(model).double().eval()
    x = images.detach().to(torch.float64)
    t = _targets(target, len(x))
    fi = FilterImportance(m64, layers)
    with torch.enable_grad():
        grads = fi.gradients(x, t)
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(len(x))

    def score() -> torch.Tensor:
        return m64(x)[rows, t]

    base = score()  # y at the unperturbed weights, for the kink test
    weights, directional, checked = {}, {}, {}
    for name in fi.layers:
        kinks = [0]
        w = fi.convs[name].weight
        flat, gflat = w.view(-1), grads[name].reshape(len(x), -1)
        idx = torch.randperm(flat.numel(), generator=g)[: min(weights_per_layer, flat.numel())]
        fd, an = [], []
        for j in idx.tolist():
            w0 = flat[j].item()

            def step(h: float, j: int = j, w0: float = w0, flat: torch.Tensor = flat) -> tuple[torch.Tensor, torch.Tensor]:
                flat[j] = w0 + h
                up = score()
                flat[j] = w0 - h
                down = score()
                flat[j] = w0  # restore exactly (float64 holds w0)
                return up, down

            fd.append(_central(step, epsilon * max(1.0, abs(w0)), base, kinks))
            an.append(gflat[:, j])
        err_w, zero_w = _rel_err(torch.stack(an), torch.stack(fd), zero_floor)

        n_out = w.shape[0]
        fidx = torch.arange(n_out) if filters_per_layer is None else torch.randperm(n_out, generator=g)[: min(filters_per_layer, n_out)]
        fd_d, an_d = [], []
        w_saved = w.detach().clone()
        for n in range(len(x)):
            xn, tn = x[n : n + 1], t[n : n + 1]
            for f in fidx.tolist():
                gf = grads[name][n, f]
                norm = gf.norm()
                if norm.item() <= zero_floor:  # dead filter for this input: no direction to step along
                    continue
                u = gf / norm

                def step(h: float, f: int = f, u: torch.Tensor = u, xn: torch.Tensor = xn, tn: torch.Tensor = tn,
                         w: torch.Tensor = w, w_saved: torch.Tensor = w_saved) -> tuple[torch.Tensor, torch.Tensor]:
                    w[f] = w_saved[f] + h * u
                    up = m64(xn)[0, tn[0]]
                    w[f] = w_saved[f] - h * u
                    down = m64(xn)[0, tn[0]]
                    w[f] = w_saved[f]
                    return up, down

                fd_d.append(_central(step, epsilon * max(1.0, w_saved[f].norm().item()), base[n], kinks))
                an_d.append(norm)
        if not torch.equal(w, w_saved):  # pragma: no cover - the restore above is exact
            raise RuntimeError(f"{name}: weights not restored after the finite-difference check")
        if fd_d:
            err_d, _ = _rel_err(torch.stack(an_d), torch.stack(fd_d), zero_floor)
        else:
            err_d = torch.zeros(0, dtype=torch.float64)
        weights[name] = float(err_w.max()) if err_w.numel() else 0.0
        directional[name] = float(err_d.max()) if err_d.numel() else 0.0
        checked[name] = {"weights": len(idx), "weight_image_pairs": int(err_w.numel()), "zero_pairs_skipped": zero_w,
                         "filter_image_pairs": int(err_d.numel()), "steps_shrunk_at_kinks": kinks[0]}
    worst = max([*weights.values(), *directional.values(), 0.0])
    if not math.isfinite(worst):
        worst = float("inf")
    return GradientCheck(weights, directional, checked, worst, epsilon)
