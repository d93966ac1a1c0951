"""Exact tiled evaluation: the whole image's loss and gradient, window by window.

The image is cut into cores on the 16 px pooling grid (the last core of a row or column
ends at the image's edge, so odd sizes pool as the whole image does); each window is its
core plus a halo of the deepest layer's receptive radius (:func:`nst_onnx.vgg19.halo`),
within the image. Every feature position belongs to the core holding its stride-aligned
origin, so sums over positions — Gram matrices, the content and TV terms — are sums over
the windows' owned positions, each computed exactly (its receptive field lies inside its
window). Per evaluation:

1. statistics: each window forward, its owned Gram sums added up → G of every style layer;
2. gradient: each window forward and backward with the owned content and TV terms and the
   style gradient from the whole image's ``G − A``; the windows' input gradients are
   *added* (overlap-add) into the image's gradient.

The result equals the untiled loss and gradient up to float32 summation order.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from ..config import TILE_GRID
from ..graphs.interface import (
    loss_io,
    owned_levels,
    term_name,
    window_features_io,
    window_loss_io,
)
from ..vgg19 import channels, downsampling, halo
from .binding import DeviceGraph, Terms, Traffic, to_device

GRID = TILE_GRID  # core edges on the pooling grid keep every window's pooling aligned


@dataclass(frozen=True)
class Tile:
    """A core (the rows and columns it owns) and its window, in image pixels, half-open."""

    core: tuple[int, int, int, int]  # y0, y1, x0, x1
    window: tuple[int, int, int, int]

    def owned(self, levels: tuple[int, ...]) -> dict[str, np.ndarray]:
        """The window graphs' ``owned_rows_d`` / ``owned_cols_d`` inputs: a feature row r of
        the window at level d is owned when its origin (r·2^d from the window's start)
        lies in the core."""
        (cy0, cy1, cx0, cx1), (wy0, wy1, wx0, wx1) = self.core, self.window
        out = {}
        for d in levels:
            for axis, (c0, c1, w0, w1) in (("rows", (cy0, cy1, wy0, wy1)),
                                           ("cols", (cx0, cx1, wx0, wx1))):
                origin = np.arange((w1 - w0) >> d) * (1 << d) + w0
                mask = ((origin >= c0) & (origin < c1)).astype(np.float32)
                out[f"owned_{axis}_{d}"] = mask.reshape((1, 1, -1, 1) if axis == "rows"
                                                        else (1, 1, 1, -1))
        return out


def _cuts(n: int, core: int) -> list[tuple[int, int]]:
    """[0, n) in pieces of ``core`` (a multiple of GRID); the last ends at n (a remainder
    under a quarter core joins the piece before it, so no sliver window is evaluated)."""
    edges = list(range(0, n, core)) + [n]
    if len(edges) > 2 and n - edges[-2] < core // 4:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:]))


def plan_tiles(h: int, w: int, core: int, margin: int) -> list[Tile]:
    """Cores of ``core`` px (a positive multiple of 16) and windows ``margin`` px around them
    (a multiple of 16), clipped to the image."""
    if core <= 0 or core % GRID or margin % GRID:
        raise ValueError(f"core {core} and halo {margin} must be multiples of {GRID}")
    return [Tile((y0, y1, x0, x1), (max(0, y0 - margin), min(h, y1 + margin),
                                    max(0, x0 - margin), min(w, x1 + margin)))
            for y0, y1 in _cuts(h, core) for x0, x1 in _cuts(w, core)]


def tiles_for(spec, h: int, w: int, core: int) -> list[Tile]:
    return plan_tiles(h, w, core, halo(list(spec.all_layers), GRID))


def window_pixels(tiles: list[Tile]) -> int:
    """Σ window areas: what one pass evaluates (the image's pixels plus the halos)."""
    return sum((t.window[1] - t.window[0]) * (t.window[3] - t.window[2]) for t in tiles)


def _window(x: np.ndarray, t: Tile) -> np.ndarray:
    y0, y1, x0, x1 = t.window
    return np.ascontiguousarray(x[:, :, y0:y1, x0:x1], dtype=np.float32)


def _at_level(a: np.ndarray, t: Tile, d: int) -> np.ndarray:
    """``a`` (1, C, H>>d, W>>d) over the window of ``t`` (its start is on the grid)."""
    y0, y1, x0, x1 = t.window
    return np.ascontiguousarray(a[:, :, y0 >> d:(y0 >> d) + ((y1 - y0) >> d),
                                  x0 >> d:(x0 >> d) + ((x1 - x0) >> d)])


def tiled_features(session, spec, image: np.ndarray, core: int) -> dict[str, np.ndarray]:
    """The features graph's outputs (``features_n`` and ``gram_n``) for a whole image,
    computed window by window with the window-features graph: a print-size content or
    style image is never evaluated whole."""
    _, _, h, w = image.shape
    io = window_features_io(spec)
    levels = owned_levels(spec, loss=False)
    feats = {n: np.zeros((1, channels(n), h >> downsampling(n), w >> downsampling(n)),
                         np.float32) for n in spec.content_layers}
    grams = {n: np.zeros((channels(n),) * 2, np.float64) for n in spec.style_layers}
    names = io.names("outputs")
    for t in tiles_for(spec, h, w, core):
        out = dict(zip(names, session.run(names, {"image": _window(image, t),
                                                  **t.owned(levels)})))
        for n in spec.style_layers:
            grams[n] += out[f"gram_sum_{n}"]
        for n in spec.content_layers:
            _keep_owned(feats[n], out[f"features_{n}"], t, downsampling(n))
    inv = _inv_n(spec, h, w)
    return {**{f"features_{n}": f for n, f in feats.items()},
            **{f"gram_{n}": (g * inv[n]).astype(np.float32) for n, g in grams.items()}}


def _guides_of(guides: np.ndarray | None, t: Tile) -> dict[str, np.ndarray]:
    """The window's crop of the masks (R, 1, H, W): pooled inside the graph, it is the
    whole image's pooled masks over the window, since the window starts on the grid."""
    return {} if guides is None else {"guides": _window(guides, t)}


def _keep_owned(full: np.ndarray, window: np.ndarray, t: Tile, d: int) -> None:
    """Copy the window's owned positions at level d into the whole image's array."""
    (cy0, cy1, cx0, cx1), (wy0, _, wx0, _) = t.core, t.window
    s = 1 << d

    def span(c0, c1, w0, n):
        first, last = -(-c0 // s), min(-(-c1 // s), n)
        return first, last, first - (w0 >> d)
    ry0, ry1, wr = span(cy0, cy1, wy0, full.shape[2])
    rx0, rx1, wc = span(cx0, cx1, wx0, full.shape[3])
    full[:, :, ry0:ry1, rx0:rx1] = window[:, :, wr:wr + ry1 - ry0, wc:wc + rx1 - rx0]


def _inv_n(spec, h: int, w: int) -> dict[str, float]:
    """1/(C·h_l·w_l) of every content and style layer at the whole image's size."""
    return {n: 1.0 / (channels(n) * (h >> downsampling(n)) * (w >> downsampling(n)))
            for n in dict.fromkeys(spec.content_layers + spec.style_layers)}


def _inv_energy(spec, guides: np.ndarray) -> dict[str, np.ndarray]:
    """With masks: each region's Gram normalisation ``1/(C·ΣT_r²)`` at every style layer,
    over the whole image — the guides pooled as the graph pools them (2×2 means, floored)."""
    out, t, level = {}, guides.astype(np.float64), 0
    for n in sorted(spec.style_layers, key=downsampling):
        while level < downsampling(n):
            r, _, h, w = t.shape
            t = t[:, :, :h // 2 * 2, :w // 2 * 2].reshape(r, 1, h // 2, 2, w // 2, 2).mean((3, 5))
            level += 1
        energy = np.sum(t * t, axis=(1, 2, 3))
        out[n] = (1.0 / np.maximum(energy * channels(n), 1e-6)).astype(np.float32)
    return out


class TiledEvaluator:
    """The loss graph's objective at an image of ``shape`` (H, W), evaluated in windows of
    ``core`` px cores: same targets and weights as :class:`~.binding.Evaluator`'s ``fixed``
    (the style targets blended; or, with masks — a guided ``spec`` and its ``guides`` —
    one per region), same :class:`~.binding.Terms` out. ``moves``: the window graphs
    (Engine.window_moves), which keep the windows on the device; without them (the CPU)
    numpy cuts the windows and adds their gradients. ``temporal``: a video frame's term,
    (its fixed inputs — problem.Temporal.fixed() — and the temporal_add graph's
    (interface, session)), added on the whole image after the windows."""

    def __init__(self, features_session, loss_session, spec, fixed: dict[str, np.ndarray],
                 shape: tuple[int, int], core: int, device: str = "cpu",
                 moves: dict[str, tuple] | None = None,
                 temporal: tuple[dict[str, np.ndarray], tuple] | None = None):
        self.features_session, self.loss_session, self.spec = features_session, loss_session, spec
        self.shape, self.core, self.device, self.moves = shape, core, device, moves
        self.temporal = temporal
        self.tiles = tiles_for(spec, *shape, core)
        self.fixed = {k: np.asarray(v, np.float32) for k, v in fixed.items()}
        self.inv = _inv_n(spec, *shape)
        self.stat_names = [f"gram_sum_{n}" for n in spec.style_layers]
        self.term_names = window_loss_io(spec).names("outputs", "term")
        # what each window's runs take besides the image, fixed for the problem: built once
        stats, loss = owned_levels(spec, loss=False), owned_levels(spec, loss=True)
        weights = {k: self.fixed[k] for k in ("content_weights", "style_weights", "tv_weight",
                                              "inv_sizes")}  # inv_sizes: the whole image's
        guides = self.fixed.get("guides")
        energy = _inv_energy(spec, guides) if spec.guided else {}
        # what a window's Gram sum is multiplied by: 1/N, or per region 1/(C·ΣT_r²)
        self.norm = {n: energy[n][:, None, None] if spec.guided else self.inv[n]
                     for n in spec.style_layers}
        crops = [_guides_of(guides, t) for t in self.tiles]
        self.stat_inputs = [t.owned(stats) | c for t, c in zip(self.tiles, crops)]
        self.loss_inputs = [{**weights, **{f"inv_energy_{n}": v for n, v in energy.items()},
                             **t.owned(loss), **c,
                             **{f"target_{n}": _at_level(self.fixed[f"target_{n}"], t,
                                                         downsampling(n))
                                for n in spec.content_layers}} for t, c in zip(self.tiles, crops)]
        cuda = device == "cuda"
        self.out_of_memory = (  # a window that does not fit stops the run, the best image kept
            f"out of {'GPU ' if cuda else ''}memory in a window of the {core} px tiles: use a "
            "smaller --tile-size or --size" + (", or raise --gpu-mem-limit" if cuda else ""))
        self.host_bytes = 0
        self.evaluations = 0
        self._graph: TiledGraph | None = None  # for calls with host arrays

    @functools.cached_property
    def bound(self) -> tuple[list[dict], list[dict]]:
        """Each window's fixed inputs (statistics pass, gradient pass) on the device, placed
        once for every graph of this evaluator (on the CPU: the arrays themselves)."""
        return ([_on(d, self.device) for d in self.stat_inputs],
                [_on(d, self.device) for d in self.loss_inputs])

    def device_graph(self, device: str, traffic: Traffic) -> TiledGraph:
        return TiledGraph(self, device, traffic)

    @property
    def window_pixels(self) -> int:
        return window_pixels(self.tiles)

    @property
    def graph(self) -> TiledGraph:
        if self._graph is None:
            self._graph = TiledGraph(self, self.device, Traffic())
        return self._graph

    def grams(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The statistics pass alone (scripts/bench_tiled.py times it)."""
        return self.graph.grams(to_device(image, self.device))

    def __call__(self, image: np.ndarray) -> Terms:
        x = np.asarray(image, np.float32).reshape(1, 3, *self.shape)
        out = self.graph(to_device(x, self.device))
        value = out.pop("grad")  # held while copied: its numpy() view dies with it
        grad = np.array(value.numpy())
        self.host_bytes += x.nbytes + grad.nbytes
        return Terms(out.pop("loss"), grad, out)


class TiledGraph:
    """A :class:`TiledEvaluator` where a device loop expects its loss graph: the image in,
    the loss, its terms and the gradient out, the image and the gradient as OrtValues on
    the device. Per evaluation: the statistics pass (each window's Gram sums come home:
    C×C numbers), the whole image's ``G − A`` (on the host, in float64), then the gradient
    pass, each window's gradient added into the image's."""

    def __init__(self, evaluator: TiledEvaluator, device: str, traffic: Traffic):
        ev = self.evaluator = evaluator
        self.device, self.traffic = device, traffic
        self.io = loss_io(ev.spec, ev.temporal is not None)  # the untiled graph's terms
        self.stats = DeviceGraph(ev.features_session, window_features_io(ev.spec), device,
                                 traffic, outputs=ev.stat_names, out_of_memory=ev.out_of_memory)
        self.loss = DeviceGraph(ev.loss_session, window_loss_io(ev.spec), device, traffic,
                                out_of_memory=ev.out_of_memory)
        self.stat_inputs, self.loss_inputs = ev.bound
        self.windows = DeviceWindows(ev.moves, device, traffic, ev.shape) if ev.moves \
            else HostWindows(ev.shape)
        self.temporal = None
        if ev.temporal is not None:
            fixed, (io, session) = ev.temporal
            self.temporal = DeviceGraph(session, io, device, traffic, fixed)
        self.seconds = 0.0

    def grams(self, image) -> dict[str, np.ndarray]:
        """The statistics pass: every style layer's Gram of the whole image (float64; with
        masks, one per region: (R, C, C))."""
        ev = self.evaluator
        total = dict.fromkeys(ev.spec.style_layers, 0.0)
        for t, fixed in zip(ev.tiles, self.stat_inputs):
            out = self.stats(image=self.windows.crop(image, t), **fixed)
            for n in total:
                total[n] = total[n] + out[f"gram_sum_{n}"].astype(np.float64)
        return {n: g * ev.norm[n] for n, g in total.items()}

    def __call__(self, image) -> dict:
        start = time.perf_counter()
        ev = self.evaluator
        diffs = {n: g - ev.fixed[f"target_gram_{n}"] for n, g in self.grams(image).items()}
        terms = {term_name("style", n): float(ev.fixed["style_weights"][i] * np.mean(d ** 2))
                 for i, (n, d) in enumerate(diffs.items())}
        terms.update(dict.fromkeys(ev.term_names, 0.0))
        gram_diff = _on({f"gram_diff_{n}": d.astype(np.float32) for n, d in diffs.items()},
                        self.device)
        self.traffic.bytes += sum(4 * d.size for d in diffs.values())
        grad = self.windows.zero()
        for t, fixed in zip(ev.tiles, self.loss_inputs):
            out = self.loss(image=self.windows.crop(image, t), **fixed, **gram_diff)
            grad = self.windows.add(grad, out["grad"], t)
            for k in ev.term_names:
                terms[k] += float(out[k])
        if self.temporal is not None:  # per pixel: the whole image at once
            out = self.temporal(grad=grad, image=image)
            grad, terms[term_name("temporal")] = out["grad_sum"], float(out[term_name("temporal")])
        ev.evaluations += 1
        self.seconds += time.perf_counter() - start
        return {"loss": sum(terms.values()), **terms, "grad": grad}


def _on(arrays: dict[str, np.ndarray], device: str) -> dict:
    return {k: to_device(v, device) for k, v in arrays.items()}


class HostWindows:
    """Windows cut, and their gradients added, by numpy on the arrays themselves: on the
    CPU an OrtValue is the array (no copy either way), and the gradient is summed in place."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape

    def crop(self, image, t: Tile):
        return to_device(_window(image.numpy(), t), "cpu")

    def zero(self):
        return to_device(np.zeros((1, 3, *self.shape), np.float32), "cpu")

    def add(self, grad, window_grad, t: Tile):
        y0, y1, x0, x1 = t.window
        grad.numpy()[:, :, y0:y1, x0:x1] += window_grad.numpy()
        return grad


class DeviceWindows:
    """Windows cut, and their gradients added, by the window graphs where the image is
    (graphs.windows): on a GPU nothing image-sized crosses to the host."""

    def __init__(self, moves: dict[str, tuple], device: str, traffic: Traffic,
                 shape: tuple[int, int]):
        from ..graphs.windows import WINDOW_ADD, WINDOW_CROP

        (crop_io, crop), (add_io, add) = moves[WINDOW_CROP], moves[WINDOW_ADD]
        self.cut = DeviceGraph(crop, crop_io, device, traffic)
        self.sum = DeviceGraph(add, add_io, device, traffic)
        self.shape, self.device = shape, device
        self._zero = None

    def crop(self, image, t: Tile):
        y0, y1, x0, x1 = t.window
        return self.cut(image=image, starts=np.array([y0, x0]), ends=np.array([y1, x1]))["window"]

    def zero(self):
        if self._zero is None:  # read, never written: one for every evaluation
            self._zero = to_device(np.zeros((1, 3, *self.shape), np.float32), self.device)
        return self._zero

    def add(self, grad, window_grad, t: Tile):
        (y0, y1, x0, x1), (h, w) = t.window, self.shape
        pads = np.array([0, 0, y0, x0, 0, 0, h - y1, w - x1])
        return self.sum(grad=grad, window_grad=window_grad, pads=pads)["grad_sum"]
