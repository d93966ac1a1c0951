"""The loss terms, each with its gradient, composed the way crowsonkb/style-transfer-pytorch
composes them: ``Scale(LayerApply(StyleLoss(target, inv_n, C), "relu1_1"), weight)``.

A *loss* is a callable ``(g, f) → (loss, grad)`` on one tensor ``f``; ``grad(scale)`` builds
``scale·∂loss/∂f`` when the backward walk reaches ``f`` (so the full-size gradient is not
held through the forward pass), folding ``scale`` in where it is cheapest (a C×C matrix
rather than a C×h×w tensor). A *term* is the same on the dict of named activations
(``LayerApply``), returning its gradient as ``[(layer, grad)]``; ``Scale`` weights one.

Definitions (N = C·h·w, F as C×(h·w)); the derivations are in docs/design.md:

* content ``wc·mean((F−P)²)`` → ``2·wc·(F−P)/N``;
* Gram ``G = F Fᵀ/N``; style ``ws·mean((G−A)²)`` → ``4·ws·(G−A) F/(C²·N)``;
* guided style (Gatys et al. 2017): per region ``F_r = F⊙T_r``,
  ``G_r = F_r F_rᵀ/(C·ΣT_r²)``, ``ws·mean_{r,i,j}((G_r−A_r)²)``;
* total variation ``wtv·½·Σ(Δx)²`` → ``wtv·(Δ_before − Δ_after)``;
* temporal (Ruder et al. 2016, video) ``wt·Σ c⊙(x−ω)²/D`` → ``2·wt·c⊙(x−ω)/D``, D = 3·H·W.

Tiled evaluation (:mod:`nst_onnx.run.tiled`) evaluates the same sums window by window:
``owned`` (a 0/1 mask, rows ⊙ columns) keeps the positions a window's core owns, so every
position counts once over all windows, and the sizes stay the whole image's. The style term
there takes the whole image's ``G − A`` (:class:`StyleGradient`): its value is the host's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .builder import GraphBuilder

GradFn = Callable[[str | None], str]  # scale (a scalar tensor, or None for 1) → gradient
Loss = Callable[[GraphBuilder, str], tuple[str, GradFn]]
Term = Callable[[GraphBuilder, dict[str, str]], tuple[str, list[tuple[str, GradFn]]]]


def _times(g: GraphBuilder, x: str, scale: str | None) -> str:
    return x if scale is None else g.op("Mul", x, scale)


def gram(g: GraphBuilder, f: str, c: int, inv_n: str) -> tuple[str, str]:
    """``G = F Fᵀ/N`` of ``f`` (1, C, h, w); returns (G, F as C×M)."""
    fm = g.op("Reshape", f, g.ints(c, -1), hint="fmat")
    return g.op("Mul", g.op("Gemm", fm, fm, transB=1, hint="ffT"), inv_n, hint="gram"), fm


def owned_mask(g: GraphBuilder, owned: tuple[str, str] | None) -> str | None:
    """(rows (1, 1, h, 1), columns (1, 1, 1, w)) 0/1 inputs → their (1, 1, h, w) product."""
    return None if owned is None else g.op("Mul", *owned, hint="owned")


@dataclass(frozen=True)
class ContentLoss:
    """``mean((F − P)²)`` against the content target P (over the ``owned`` positions of a
    window, N the whole image's, when tiled)."""

    target: str
    inv_n: str  # 1/N, a scalar tensor
    owned: tuple[str, str] | None = None

    def __call__(self, g: GraphBuilder, f: str) -> tuple[str, GradFn]:
        diff = g.op("Sub", f, self.target, hint="cdiff")
        if self.owned is not None:
            diff = g.op("Mul", diff, owned_mask(g, self.owned), hint="cdiff_owned")
            loss = g.op("Mul", g.op("ReduceSum", g.op("Mul", diff, diff), keepdims=0),
                        self.inv_n)
        else:
            loss = g.op("ReduceMean", g.op("Mul", diff, diff), keepdims=0)

        def grad(scale: str | None) -> str:
            coef = _times(g, g.op("Mul", self.inv_n, g.const(2.0)), scale)
            return g.op("Mul", diff, coef, hint="cgrad")
        return loss, grad


@dataclass(frozen=True)
class StyleLoss:
    """``mean((G − A)²)`` over the C×C Gram matrix against the style target A."""

    target: str
    inv_n: str
    channels: int

    def __call__(self, g: GraphBuilder, f: str) -> tuple[str, GradFn]:
        c = self.channels
        gm, fm = gram(g, f, c, self.inv_n)
        diff = g.op("Sub", gm, self.target, hint="gdiff")
        loss = g.op("ReduceMean", g.op("Mul", diff, diff), keepdims=0)

        def grad(scale: str | None) -> str:
            coef = _times(g, g.op("Mul", self.inv_n, g.const(4.0 / (c * c))), scale)
            scaled = g.op("Mul", diff, coef, hint="gdiff_scaled")  # on the C×C side
            return g.op("Reshape", g.op("MatMul", scaled, fm), g.op("Shape", f), hint="sgrad")
        return loss, grad


@dataclass(frozen=True)
class StyleGradient:
    """The style term of one window of a tiled evaluation: the whole image's ``G − A``
    (an input, from the statistics pass) against the window's owned features. Its gradient
    is :class:`StyleLoss`'s with that G; its value (``mean((G − A)²)``, known from G alone)
    is the host's, so the term's value here is 0."""

    gram_diff: str
    inv_n: str
    channels: int
    owned: tuple[str, str]

    def __call__(self, g: GraphBuilder, f: str) -> tuple[str, GradFn]:
        c = self.channels
        fm = g.op("Reshape", g.op("Mul", f, owned_mask(g, self.owned)), g.ints(c, -1),
                  hint="fmat_owned")

        def grad(scale: str | None) -> str:
            coef = _times(g, g.op("Mul", self.inv_n, g.const(4.0 / (c * c))), scale)
            scaled = g.op("Mul", self.gram_diff, coef, hint="gdiff_scaled")
            return g.op("Reshape", g.op("MatMul", scaled, fm), g.op("Shape", f), hint="sgrad")
        return g.const(0.0), grad


def owned_gram(g: GraphBuilder, f: str, c: int, owned: tuple[str, str]) -> str:
    """``Σ_owned f fᵀ`` (not normalised) of a window: summed over the windows and divided by
    the whole image's N, the image's Gram matrix."""
    fm = g.op("Reshape", g.op("Mul", f, owned_mask(g, owned)), g.ints(c, -1), hint="fmat_owned")
    return g.op("Gemm", fm, fm, transB=1, hint="ffT_owned")


def owned_guided_gram(g: GraphBuilder, f: str, guide: str, c: int,
                      owned: tuple[str, str]) -> str:
    """``Σ_owned (F⊙T_r)(F⊙T_r)ᵀ`` per region, (R, C, C), not normalised: summed over the
    windows and times the whole image's ``1/(C·ΣT_r²)``, the image's guided Gram."""
    fr = g.op("Mul", g.op("Mul", f, owned_mask(g, owned)), guide, hint="f_guided_owned")
    fm = g.op("Reshape", fr, g.ints(0, c, -1), hint="fmat_r_owned")
    return g.op("MatMul", fm, g.op("Transpose", fm, perm=[0, 2, 1]), hint="ffT_r_owned")


@dataclass(frozen=True)
class GuidedStyleGradient:
    """:class:`GuidedStyleLoss` for one window of a tiled evaluation: the whole image's
    ``G_r − A_r`` and ``1/(C·ΣT_r²)`` (inputs, from the statistics pass) against the window's
    owned, guided features. Its value is the host's (0 here), as :class:`StyleGradient`'s."""

    gram_diff: str  # (R, C, C)
    guide: str  # (R, 1, h, w): the window's guides at this layer
    inv_energy: str  # (R,)
    channels: int
    owned: tuple[str, str]

    def __call__(self, g: GraphBuilder, f: str) -> tuple[str, GradFn]:
        c = self.channels
        fr = g.op("Mul", g.op("Mul", f, owned_mask(g, self.owned)), self.guide,
                  hint="f_guided_owned")
        fm = g.op("Reshape", fr, g.ints(0, c, -1), hint="fmat_r_owned")

        def grad(scale: str | None) -> str:
            inv_n = g.op("Reshape", self.inv_energy, g.ints(-1, 1, 1))
            coef = _times(g, g.op("Mul", inv_n, g.const(4.0 / (c * c))), scale)
            scaled = g.op("Mul", self.gram_diff, coef, hint="gdiff_scaled")
            per_region = g.op("Reshape", g.op("MatMul", scaled, fm), g.op("Shape", fr))
            return g.op("ReduceMean", g.op("Mul", per_region, self.guide), axes=[0],
                        keepdims=1, hint="sgrad")
        return g.const(0.0), grad


@dataclass(frozen=True)
class GuidedStyleLoss:
    """Guided Grams (Gatys et al. 2017, "Controlling Perceptual Factors"): ``guide`` is
    (R, 1, h, w), ``target`` (R, C, C); an all-ones guide gives the plain Gram. Regions
    share the weight as blended styles do (a mean over regions). Gradient:
    ``∂/∂F = mean_r T_r ⊙ 4·(G_r − A_r) F_r/(C²·C·ΣT_r²)``."""

    target: str
    guide: str
    channels: int

    def __call__(self, g: GraphBuilder, f: str) -> tuple[str, GradFn]:
        c = self.channels
        fr = g.op("Mul", f, self.guide, hint="f_guided")  # (R, C, h, w)
        fm = g.op("Reshape", fr, g.ints(0, c, -1), hint="fmat_r")
        energy = g.op("ReduceSum", g.op("Mul", self.guide, self.guide), g.ints(1, 2, 3))
        inv_n = g.op("Reciprocal", g.op("Clip", g.op("Mul", energy, g.const(float(c))),
                                        g.const(1e-6)))  # (R, 1, 1, 1)
        inv_n = g.op("Reshape", inv_n, g.ints(-1, 1, 1))
        gm = g.op("Mul", g.op("MatMul", fm, g.op("Transpose", fm, perm=[0, 2, 1])), inv_n,
                  hint="gram_r")
        diff = g.op("Sub", gm, self.target, hint="gdiff")
        loss = g.op("ReduceMean", g.op("Mul", diff, diff), keepdims=0)

        def grad(scale: str | None) -> str:
            coef = _times(g, g.op("Mul", inv_n, g.const(4.0 / (c * c))), scale)
            scaled = g.op("Mul", diff, coef, hint="gdiff_scaled")
            per_region = g.op("Reshape", g.op("MatMul", scaled, fm), g.op("Shape", fr))
            return g.op("ReduceMean", g.op("Mul", per_region, self.guide), axes=[0],
                        keepdims=1, hint="sgrad")
        return loss, grad


@dataclass(frozen=True)
class TotalVariation:
    """``½·Σ(Δx)²`` over rows and columns of the image (tiled: the differences from the
    ``owned`` pixels to their next neighbours)."""

    owned: tuple[str, str] | None = None

    def __call__(self, g: GraphBuilder, x: str) -> tuple[str, GradFn]:
        big = np.iinfo(np.int64).max
        parts, diffs = [], []
        for axis in (2, 3):
            ax = g.ints(axis)
            nxt = g.op("Slice", x, g.ints(1), g.ints(big), ax)
            prv = g.op("Slice", x, g.ints(0), g.ints(-1), ax)
            d = g.op("Sub", nxt, prv, hint=f"tv_d{axis}")
            if self.owned is not None:  # the owned pixel, not its last neighbour, along axis
                rows, cols = self.owned
                if axis == 2:
                    rows = g.op("Slice", rows, g.ints(0), g.ints(-1), ax)
                else:
                    cols = g.op("Slice", cols, g.ints(0), g.ints(-1), ax)
                d = g.op("Mul", d, g.op("Mul", rows, cols), hint=f"tv_d{axis}_owned")
            parts.append(g.op("ReduceSum", g.op("Mul", d, d), keepdims=0))
            diffs.append((axis, d))
        loss = g.op("Mul", g.const(0.5), g.op("Add", *parts), hint="tv")

        def grad(scale: str | None) -> str:
            out = []
            for axis, d in diffs:  # Δ padded before minus Δ padded after, along the axis
                before, after = np.zeros(8, np.int64), np.zeros(8, np.int64)
                before[axis], after[4 + axis] = 1, 1
                out.append(g.op("Sub", g.op("Pad", d, g.const(before)),
                                g.op("Pad", d, g.const(after))))
            return _times(g, g.op("Add", *out), scale)
        return loss, grad


@dataclass(frozen=True)
class TemporalLoss:
    """Ruder, Dosovitskiy & Brox ("Artistic style transfer for videos", 2016): pull the
    image towards ``warped`` (ω, the previous stylised frame carried into this one by the
    optical flow) where ``reliability`` (c, (1, 1, H, W) in [0, 1]) trusts the flow:
    ``Σ c⊙(x − ω)²/D``, D = 3·H·W (``inv_d`` = 1/D, from the host like the layers' sizes)."""

    warped: str
    reliability: str
    inv_d: str

    def __call__(self, g: GraphBuilder, x: str) -> tuple[str, GradFn]:
        diff = g.op("Sub", x, self.warped, hint="tdiff")
        weighted = g.op("Mul", diff, self.reliability, hint="tdiff_c")
        loss = g.op("Mul", g.op("ReduceSum", g.op("Mul", weighted, diff), keepdims=0),
                    self.inv_d)

        def grad(scale: str | None) -> str:
            coef = _times(g, g.op("Mul", self.inv_d, g.const(2.0)), scale)
            return g.op("Mul", weighted, coef, hint="tgrad")
        return loss, grad


@dataclass(frozen=True)
class LayerApply:
    """A loss applied to one named activation (``"image"`` for the image itself)."""

    loss: Loss
    layer: str

    def __call__(self, g: GraphBuilder, acts: dict[str, str]):
        value, grad = self.loss(g, acts[self.layer])
        return value, [(self.layer, grad)]


@dataclass(frozen=True)
class Scale:
    """A term times a run-time weight (a scalar tensor), in its loss and its gradient."""

    term: Term
    weight: str

    def __call__(self, g: GraphBuilder, acts: dict[str, str]):
        value, grads = self.term(g, acts)

        def scaled(grad: GradFn) -> GradFn:
            return lambda s: grad(self.weight if s is None else g.op("Mul", self.weight, s))
        return g.op("Mul", self.weight, value), [(layer, scaled(gr)) for layer, gr in grads]
