"""The whole-image moves of a tiled evaluation (nst_onnx.run.tiled) as ONNX graphs, so that
on a GPU the image, its windows and the summed gradient never leave the device: a window is
cut from the image, a window's gradient is added into the image's (overlap-add), and a video
frame's temporal term — one value per pixel, no network — is added on the whole image.

Each graph is built by a pure function next to its declared interface; none has weights,
so one set serves every model.
"""

from __future__ import annotations

import onnx

from .builder import GraphBuilder
from .interface import Interface, Tensor, term_name
from .losses import LayerApply, Scale, TemporalLoss

IMAGE = (1, 3, "H", "W")
WINDOW = (1, 3, "h", "w")


def window_crop_io() -> Interface:
    return Interface("nst_window_crop", "window_crop.onnx", (
        Tensor("image", IMAGE, "the whole image", "image"),
        Tensor("starts", (2,), "the window's first row and column", "size", "int64"),
        Tensor("ends", (2,), "one past its last row and column", "size", "int64"),
    ), (Tensor("window", WINDOW, "image[:, :, y0:y1, x0:x1]", "image"),))


def build_window_crop() -> onnx.ModelProto:
    g = GraphBuilder()
    g.op("Slice", "image", "starts", "ends", g.ints(2, 3), outputs=["window"])
    return g.finish(window_crop_io())


def window_add_io() -> Interface:
    return Interface("nst_window_add", "window_add.onnx", (
        Tensor("grad", IMAGE, "the image's gradient summed so far", "grad"),
        Tensor("window_grad", WINDOW, "one window's part of it", "grad"),
        Tensor("pads", (8,), "ONNX Pad's pads placing the window in the image: "
               "(0, 0, y0, x0, 0, 0, H − y1, W − x1)", "size", "int64"),
    ), (Tensor("grad_sum", IMAGE, "grad + the window's part at its place", "grad"),))


def build_window_add() -> onnx.ModelProto:
    g = GraphBuilder()
    g.op("Add", "grad", g.op("Pad", "window_grad", "pads", mode="constant"),
         outputs=["grad_sum"])
    return g.finish(window_add_io())


def temporal_add_io() -> Interface:
    return Interface("nst_temporal_add", "temporal_add.onnx", (
        Tensor("grad", IMAGE, "the image's gradient of the other terms", "grad"),
        Tensor("image", IMAGE, "the whole image", "image"),
        Tensor("warped", IMAGE, "ω: the previous stylised frame warped into this one by the "
               "optical flow, RGB 0..255", "target"),
        Tensor("reliability", (1, 1, "H", "W"), "c: where the flow is trusted, 0..1",
               "guide"),
        Tensor("temporal_weight", (), "wt", "weight"),
        Tensor("inv_pixels", (), "1/D, D = 3·H·W (the image's values)", "size"),
    ), (Tensor("grad_sum", IMAGE, "grad + ∂(temporal term)/∂image", "grad"),
        Tensor(term_name("temporal"), (), "wt·Σ c⊙(x−ω)²/D", "term", group="temporal")))


def build_temporal_add() -> onnx.ModelProto:
    """The loss graph's own temporal term (graphs/losses.py), on the whole image."""
    g = GraphBuilder()
    term = Scale(LayerApply(TemporalLoss("warped", "reliability", "inv_pixels"), "image"),
                 "temporal_weight")
    value, [(_, grad)] = term(g, {"image": "image"})
    g.op("Identity", value, outputs=[term_name("temporal")])
    g.op("Add", "grad", grad(None), outputs=["grad_sum"])
    return g.finish(temporal_add_io())


WINDOW_CROP, WINDOW_ADD, TEMPORAL_ADD = "window_crop", "window_add", "temporal_add"
WINDOW_MOVES = {WINDOW_CROP: (window_crop_io, build_window_crop),
                WINDOW_ADD: (window_add_io, build_window_add),
                TEMPORAL_ADD: (temporal_add_io, build_temporal_add)}
