"""What each exported graph takes and returns, declared once.

The builders take their graph inputs and outputs from these declarations, export writes
them into the manifest, the runtime binds by them, and the front ends read the loss terms
through them. Every tensor has a name, dtype, shape (ints, or names for dynamic sizes),
a meaning, and a role:

* inputs: ``image`` (what is optimised), ``target`` (computed once from the content and
  style images), ``weight`` (run-time loss weights), ``guide`` (masks), ``size`` (derived by
  the host from the image size alone: :func:`inv_sizes`), ``state`` (optimiser vectors);
* outputs: ``loss``, ``grad``, ``term`` (one loss term, grouped content / style / tv),
  ``feature`` (targets), ``state``, ``scalar``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper

from ..vgg19 import channels, downsampling

DTYPES = {"float32": 1, "int64": 7, "bool": 9}  # onnx TensorProto codes
TERM_GROUPS = ("content", "style", "tv")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int | str, ...]
    meaning: str
    role: str
    dtype: str = "float32"
    group: str = ""  # loss terms: content | style | tv

    def value_info(self):
        return helper.make_tensor_value_info(self.name, DTYPES[self.dtype], list(self.shape))

    def describe(self) -> dict:
        d = {"dtype": self.dtype, "shape": list(self.shape), "role": self.role,
             "meaning": self.meaning}
        return d | ({"group": self.group} if self.group else {})


@dataclass(frozen=True)
class Interface:
    """One graph's declared inputs and outputs."""

    name: str  # the ONNX graph's name
    file: str  # file name in the model directory
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    def value_infos(self, which: str) -> list:
        return [t.value_info() for t in getattr(self, which)]

    def names(self, which: str, role: str | None = None) -> list[str]:
        return [t.name for t in getattr(self, which) if role is None or t.role == role]

    def describe(self) -> dict:
        """The manifest's entry for this graph."""
        return {"graph": self.name,
                "inputs": {t.name: t.describe() for t in self.inputs},
                "outputs": {t.name: t.describe() for t in self.outputs}}


def term_name(group: str, layer: str = "") -> str:
    """``content_loss_relu4_2``, ``style_loss_relu1_1``, ``tv_loss``."""
    return f"{group}_loss" + (f"_{layer}" if layer else "")


def group_terms(terms: dict[str, float]) -> dict[str, float]:
    """Loss terms summed per group: {'content': …, 'style': …, 'tv': …}."""
    out = dict.fromkeys(TERM_GROUPS, 0.0)
    for name, v in terms.items():  # 'temporal' too, where the graph has that term
        group = name.split("_loss")[0]
        out[group] = out.get(group, 0.0) + v
    return out


def _image(meaning: str = "RGB, float32, 0..255, NCHW") -> Tensor:
    return Tensor("image", (1, 3, "H", "W"), meaning, "image")


def _features_shape(layer: str) -> tuple:
    return (1, channels(layer), f"h_{layer}", f"w_{layer}")


def sized_layers(spec) -> tuple[str, ...]:
    """The layers whose loss is normalised by their size N = C·h·w: every content layer, and
    the style layers unless the style loss is guided (then normalised by the guides)."""
    return spec.content_layers + (() if spec.guided else spec.style_layers)


def inv_pixels(h: int, w: int) -> np.ndarray:
    """The temporal graph's ``inv_pixels``: 1/(3·h·w)."""
    return np.asarray(1.0 / (3 * h * w), np.float32)


def inv_sizes(spec, h: int, w: int) -> np.ndarray:
    """The ``inv_sizes`` input for an h×w image: 1/(C·h_l·w_l) per :func:`sized_layers`.

    Computed on the host so the loss graph does no shape arithmetic (which has no CUDA
    kernels and would cost host round trips on a GPU). Each 2×2 pool floors the size."""
    out = []
    for layer in sized_layers(spec):
        d = downsampling(layer)
        out.append(1.0 / (channels(layer) * (h >> d) * (w >> d)))
    return np.asarray(out, np.float32)


def features_io(spec) -> Interface:
    outputs = [Tensor(f"features_{n}", _features_shape(n), f"{n} activations (content target)",
                      "feature") for n in spec.content_layers]
    outputs += [Tensor(f"gram_{n}", (channels(n), channels(n)),
                       f"Gram matrix F·Fᵀ/N of {n}, N = C·h·w (style target)", "feature")
                for n in spec.style_layers]
    return Interface("nst_features", "features.onnx", (_image(),), tuple(outputs))


def loss_io(spec, temporal: bool = False) -> Interface:
    """The loss-and-gradient graph; ``temporal``: its video twin (``temporal_loss.onnx``),
    which also pulls the image towards the previous stylised frame warped into this one."""
    inputs = [_image()]
    if spec.guided:
        inputs.append(Tensor("guides", ("R", 1, "H", "W"),
                             "one mask per region (style), 0..1, at the image's size", "guide"))
    if temporal:
        inputs += [Tensor("warped", (1, 3, "H", "W"), "ω: the previous stylised frame "
                          "warped into this one by the optical flow, RGB 0..255", "target"),
                   Tensor("reliability", (1, 1, "H", "W"), "c: where the flow is trusted, "
                          "0..1 (0 at disocclusions and motion boundaries)", "guide")]
    inputs += [Tensor(f"target_{n}", _features_shape(n),
                      f"content target: features_{n} of the content", "target")
               for n in spec.content_layers]
    for n in spec.style_layers:
        c = channels(n)
        inputs.append(Tensor(f"target_gram_{n}", (("R",) if spec.guided else ()) + (c, c),
                             f"style target: gram_{n} of each region's style" if spec.guided
                             else f"style target: (blended) gram_{n} of the style(s)", "target"))
    inputs += [
        Tensor("content_weights", (len(spec.content_layers),), "wc per content layer", "weight"),
        Tensor("style_weights", (len(spec.style_layers),), "ws per style layer", "weight"),
        Tensor("tv_weight", (), "wtv", "weight"),
        Tensor("inv_sizes", (len(sized_layers(spec)),),
               "1/(C·h·w) of " + ", ".join(sized_layers(spec)) + " at this image size "
               "(h, w = H, W floored by each 2×2 pool; nst_onnx.graphs.interface.inv_sizes)",
               "size"),
    ]
    if temporal:
        inputs += [Tensor("temporal_weight", (), "wt", "weight"),
                   Tensor("inv_pixels", (), "1/D, D = 3·H·W (the image's values)", "size")]
    style_meaning = "ws·mean((G−A)²)" + (" over regions, G_r = (F⊙T_r)(F⊙T_r)ᵀ/(C·ΣT_r²)"
                                        if spec.guided else "")
    outputs = [Tensor("loss", (), "total loss: the sum of the terms", "loss"),
               Tensor("grad", (1, 3, "H", "W"), "∂loss/∂image", "grad")]
    outputs += [Tensor(term_name("content", n), (), "wc·mean((F−P)²)", "term", group="content")
                for n in spec.content_layers]
    outputs += [Tensor(term_name("style", n), (), style_meaning, "term", group="style")
                for n in spec.style_layers]
    outputs.append(Tensor(term_name("tv"), (), "wtv·½·Σ(Δx)²", "term", group="tv"))
    if temporal:
        outputs.append(Tensor(term_name("temporal"), (), "wt·Σ c⊙(x−ω)²/D", "term",
                              group="temporal"))
        return Interface("nst_temporal_loss_and_grad", "temporal_loss.onnx", tuple(inputs),
                         tuple(outputs))
    return Interface("nst_loss_and_grad", "loss.onnx", tuple(inputs), tuple(outputs))


def temporal_loss_io(spec) -> Interface:
    return loss_io(spec, temporal=True)


# --------------------------------------------------------------------------- tiled evaluation


def owned_levels(spec, loss: bool) -> tuple[int, ...]:
    """The pooling levels (0: the image) whose owned-position masks a window graph takes:
    the style layers' (statistics), and also the content layers' and the image's (loss)."""
    layers = spec.style_layers + (spec.content_layers if loss else ())
    return tuple(sorted({downsampling(n) for n in layers} | ({0} if loss else set())))


def _owned(spec, loss: bool) -> list[Tensor]:
    out = []
    for d in owned_levels(spec, loss):
        what = "the image" if d == 0 else f"features pooled {d}×"
        out += [Tensor(f"owned_rows_{d}", (1, 1, f"h{d}", 1),
                       f"1 on the rows of {what} this window's core owns, else 0", "size"),
                Tensor(f"owned_cols_{d}", (1, 1, 1, f"w{d}"),
                       f"1 on the columns of {what} this window's core owns, else 0", "size")]
    return out


def window_features_io(spec) -> Interface:
    """One window of a tiled image: its content features (the host keeps the owned ones)
    and each style layer's Gram sum over the owned positions (summed over the windows and
    divided by the image's N: the image's Gram)."""
    outputs = [Tensor(f"features_{n}", _features_shape(n), f"{n} activations of the window",
                      "feature") for n in spec.content_layers]
    r = ("R",) if spec.guided else ()
    outputs += [Tensor(f"gram_sum_{n}", (*r, channels(n), channels(n)),
                       f"Σ (f⊙T_r)(f⊙T_r)ᵀ per region over the owned positions of {n}"
                       if spec.guided else f"Σ f·fᵀ over the owned positions of {n}", "feature")
                for n in spec.style_layers]
    return Interface("nst_window_features", "window_features.onnx",
                     (_image("one window of the image: RGB, float32, 0..255, NCHW"),
                      *_window_guides(spec), *_owned(spec, loss=False)), tuple(outputs))


def _window_guides(spec) -> list[Tensor]:
    return [Tensor("guides", ("R", 1, "H", "W"), "the masks over this window, 0..1", "guide")
            ] if spec.guided else []


def window_loss_io(spec) -> Interface:
    """One window's share of the loss and the gradient of the whole image's objective: the
    content and TV terms over its owned positions, the style gradient from the whole
    image's ``G − A``; the host adds the style values and sums the windows' gradients."""
    inputs = [_image("one window of the image: RGB, float32, 0..255, NCHW"),
              *_window_guides(spec)]
    inputs += [Tensor(f"target_{n}", _features_shape(n),
                      f"the content target features_{n} over this window", "target")
               for n in spec.content_layers]
    r = ("R",) if spec.guided else ()
    inputs += [Tensor(f"gram_diff_{n}", (*r, channels(n), channels(n)),
                      f"G − A of {n}: the whole image's Gram minus the style target"
                      + (" (per region)" if spec.guided else ""), "target")
               for n in spec.style_layers]
    if spec.guided:
        inputs += [Tensor(f"inv_energy_{n}", ("R",), f"1/(C·ΣT_r²) of {n}'s guides over the "
                          "whole image: each region's Gram normalisation", "size")
                   for n in spec.style_layers]
    inputs += [
        Tensor("content_weights", (len(spec.content_layers),), "wc per content layer", "weight"),
        Tensor("style_weights", (len(spec.style_layers),), "ws per style layer", "weight"),
        Tensor("tv_weight", (), "wtv", "weight"),
        Tensor("inv_sizes", (len(sized_layers(spec)),),
               "1/(C·h·w) of " + ", ".join(sized_layers(spec)) + " at the whole image's size",
               "size"),
        *_owned(spec, loss=True),
    ]
    outputs = [Tensor("grad", (1, 3, "H", "W"), "this window's part of ∂loss/∂image "
                      "(summed over the windows: the whole gradient)", "grad")]
    outputs += [Tensor(term_name("content", n), (), "wc·Σ_owned (F−P)²/N", "term",
                       group="content") for n in spec.content_layers]
    outputs.append(Tensor(term_name("tv"), (), "wtv·½·Σ_owned (Δx)²", "term", group="tv"))
    return Interface("nst_window_loss", "window_loss.onnx", tuple(inputs), tuple(outputs))
