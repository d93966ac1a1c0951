"""One content at one size, its style targets and weights, bound to a loss session: the
objective (loss and gradient) at any image of that size.

:func:`prepare` loads and fits the images, applies the colour mode, draws the masks' guides,
computes the targets once on the engine's features graph and binds them with the weights as
the loss graph's fixed inputs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .config import LossWeights, check_tile_size
from .errors import BadInput
from .graphs.interface import inv_pixels, inv_sizes, loss_io
from .graphs.windows import TEMPORAL_ADD
from .io import color
from .io.images import fit_longest_side, fitted_size, load_image, to_nchw, to_pil
from .run.binding import Evaluator, Terms
from .run.engine import Engine
from .run.tiled import TiledEvaluator, tiled_features


@dataclass(frozen=True)
class Temporal:
    """The video's temporal term for one frame (Ruder et al. 2016): ω, the previous
    stylised frame warped into this one, and c, where that warp is trusted, both at the
    frame's size; ``weight`` is wt (:class:`~nst_onnx.config.VideoOptions`)."""

    warped: np.ndarray  # (H, W, 3) float32, RGB 0..255
    reliability: np.ndarray  # (H, W) float32, 0..1
    weight: float

    def fixed(self) -> dict[str, np.ndarray]:
        """The temporal graph's extra inputs."""
        h, w = self.reliability.shape
        return {"warped": np.ascontiguousarray(self.warped.transpose(2, 0, 1)[None], np.float32),
                "reliability": np.ascontiguousarray(self.reliability[None, None], np.float32),
                "temporal_weight": np.asarray(self.weight, np.float32),
                "inv_pixels": inv_pixels(h, w)}


@dataclass
class Problem:
    """One content, its style targets and weights: the loss and its gradient at any image."""

    shape: tuple[int, int, int]  # (H, W, 3)
    content: np.ndarray  # float32 (1, 3, H, W), the resized content
    styles: list[np.ndarray]  # float32 (1, 3, h, w) each, as used for the targets
    evaluator: Evaluator | TiledEvaluator
    weights: LossWeights
    manifest: dict  # of the model whose loss graph this problem runs
    content_rgb: np.ndarray | None = None  # the content in colour, when ``content`` is not

    @property
    def regions(self) -> int:
        """Mask regions (guided style loss), 0 without masks."""
        guides = self.evaluator.fixed.get("guides")
        return 0 if guides is None else guides.shape[0]

    @property
    def style_pixels(self) -> int:
        """Pixels of the largest style image as used (its features are computed too)."""
        return max(s.shape[2] * s.shape[3] for s in self.styles)

    @property
    def tiling(self) -> tuple[int, int] | None:
        """(how many tiles, their core side in px) where the objective is tiled; else None."""
        tiles = getattr(self.evaluator, "tiles", None)
        return (len(tiles), self.evaluator.core) if tiles else None

    def finish(self, x_chw: np.ndarray) -> np.ndarray:
        """The optimised image → the output: recombined with the content's chroma where the
        colour mode asks (luminance-only transfer, post-hoc chroma swap)."""
        if self.weights.preserve_colors not in ("luminance", "post"):
            return x_chw
        rgb = (self.content_rgb if self.content_rgb is not None else self.content)[0]
        y = color.luminance(x_chw.transpose(1, 2, 0))
        return color.with_chroma(y, rgb.transpose(1, 2, 0).astype(np.float64)).transpose(2, 0, 1)

    def evaluate(self, x_chw: np.ndarray) -> Terms:
        """Fast path: x as (3, H, W) or (1, 3, H, W), any float dtype."""
        return self.evaluator(x_chw.reshape(1, 3, *self.shape[:2]))

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """x: float64 (H, W, 3), RGB in [0, 255] → (loss, gradient of x's shape, float64)."""
        x = np.asarray(x)
        if x.shape != self.shape:
            raise BadInput(f"x has shape {x.shape}; this problem's shape is {self.shape}")
        t = self.evaluate(x.transpose(2, 0, 1))
        return t.loss, t.grad[0].transpose(1, 2, 0).astype(np.float64)

    def initial(self, init="content", seed: int = 0) -> np.ndarray:
        """Starting image (3, H, W) float64: 'content', 'noise', 'style', a decoded image
        (PIL), or an earlier result (3, h', w') to upscale (Lanczos). Image files are
        decoded by the caller, under its pixel limit (:func:`~nst_onnx.io.images.load_image`)."""
        h, w = self.shape[:2]
        if isinstance(init, np.ndarray):
            if init.shape[1:] == (h, w):  # a checkpoint's image: exactly as it was
                return init.astype(np.float64)
            return to_nchw(to_pil(init[None]).resize((w, h), Image.LANCZOS))[0].astype(np.float64)
        if init == "content":
            return self.content[0].astype(np.float64)
        if init == "noise":
            return self._as_optimised(np.random.default_rng(seed).uniform(0, 255, (3, h, w)))
        if init == "style":
            init = to_pil(self.styles[0])
        if not isinstance(init, Image.Image):
            raise TypeError(f"init {init!r}: content, noise, style, a PIL image or an array")
        x = to_nchw(init.convert("RGB").resize((w, h), Image.LANCZOS))[0].astype(np.float64)
        return self._as_optimised(x)

    def _as_optimised(self, x: np.ndarray) -> np.ndarray:
        """A start in colour → what this problem optimises: luminance-only transfer works on
        a grey image (its content and styles are grey), so a colour start (an ``--init``
        image, noise, a video frame's warped start) is made grey, as ``finish`` would."""
        if self.weights.preserve_colors != "luminance":
            return x
        return color.grey(color.luminance(x.transpose(1, 2, 0))).transpose(2, 0, 1)


def listed(x) -> list:
    """One image or a list/tuple of them → a list."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


def fit_content(img: Image.Image, side: int, min_side: int) -> Image.Image:
    """The content at ``side`` px (longest side), refused when a chosen layer would get no
    pixel: the message names the smallest size that works for this picture's aspect."""
    out = fit_longest_side(img, side)
    if min(out.size) >= min_side:
        return out
    need = _smallest_side(img.size, max(side, min_side), min_side)
    raise BadInput(f"--size {side} is too small for this {img.size[0]}×{img.size[1]} content "
                   f"image ({out.size[0]}×{out.size[1]}): the chosen layers need ≥ {min_side} px "
                   f"on each side; use --size {need} or more")


def _smallest_side(size: tuple[int, int], start: int, min_side: int) -> int:
    """The smallest longest side ≥ ``start`` at which the short side (rounded as
    :func:`fit_longest_side` rounds it) reaches ``min_side``: in closed form, then checked
    a step either way (a 1×5000 picture would otherwise take thousands of resizes)."""
    long, short = max(size), min(size)

    def short_at(s: int) -> int:
        return max(1, round(short * (s / long)))
    need = max(start, math.ceil((min_side - 0.5) * long / short))
    while short_at(need) < min_side:
        need += 1
    while need - 1 >= start and short_at(need - 1) >= min_side:
        need -= 1
    return need


def style_side(size: int, style_scale: float, min_side: int) -> int:
    """The longest side style images are used at for a content of ``size`` px."""
    return max(min_side, round(size * style_scale))


def shapes(content: Image.Image, styles: list[Image.Image], size: int, style_scale: float,
           min_side: int) -> tuple[tuple[int, int], int]:
    """((H, W) of the content, pixels of the largest style) as :func:`prepare` will use them,
    from the decoded sizes alone: the memory estimate comes before any resize or feature."""
    w, h = fitted_size(content.size, size)
    side = style_side(size, style_scale, min_side)
    return (h, w), max(math.prod(fitted_size(s.size, side)) for s in styles)


def prepare(engine: Engine, content, styles, size: int, masks=None,
            weights: LossWeights | None = None, max_image_pixels: int | None = None,
            tile_size: int | None = None, temporal: Temporal | None = None) -> Problem:
    """Load and resize the images, compute the targets once, and bind them (see
    :meth:`nst_onnx.api.StyleTransfer.prepare`). ``tile_size``: evaluate the objective
    (and the targets) in tiles owning that many px a side (:mod:`nst_onnx.run.tiled`);
    ``temporal``: add the video's temporal term (the temporal twin of the loss graph)."""
    lw = weights or LossWeights()
    spec, log = engine.spec, engine.log
    check_tile_size(tile_size)
    styles = listed(styles)
    if not styles:
        raise BadInput("give at least one style image")
    lw.validate(len(styles), len(spec.style_layers))
    content_img = fit_content(load_image(content, "content image", max_image_pixels, log),
                              size, spec.min_side)
    side = style_side(size, lw.style_scale, spec.min_side)
    style_arrays = []
    for i, s in enumerate(styles):
        img = fit_longest_side(load_image(s, f"style image {i + 1}", max_image_pixels, log),
                               side)
        if min(img.size) < spec.min_side:
            raise BadInput(f"style image {i + 1} is too narrow at this size "
                           f"({img.size[0]}×{img.size[1]}); raise --size or --style-scale")
        style_arrays.append(to_nchw(img))
    x_content, content_rgb, style_arrays = _colour_mode(lw.preserve_colors,
                                                        to_nchw(content_img), style_arrays)
    guides = None if masks is None else _guides(masks, len(styles), content_img.size, lw,
                                                max_image_pixels, log)
    h, w = x_content.shape[2:]
    if tile_size is not None:  # the targets are plain features and Grams, tiled too
        windows, _ = engine.window_sessions()
        content_feats, *style_feats = [tiled_features(windows, spec, x, tile_size)
                                       for x in (x_content, *style_arrays)]
    else:
        content_feats, *style_feats = engine.features([x_content, *style_arrays])
    spec = dataclasses.replace(spec, guided=guides is not None)
    fixed = _fixed_inputs(spec, lw, content_feats, style_feats, guides, (h, w))
    if temporal is not None and temporal.reliability.shape != (h, w):
        raise BadInput(f"the temporal term is {temporal.reliability.shape[1]}×"
                       f"{temporal.reliability.shape[0]}, the content {w}×{h}")
    if tile_size is not None:
        cuda = engine.device == "cuda"
        moves = engine.window_moves() if cuda or temporal is not None else {}
        evaluator = TiledEvaluator(
            *engine.window_sessions(spec.guided), spec, fixed, (h, w), tile_size, engine.device,
            moves if cuda else None,
            None if temporal is None else (temporal.fixed(), moves[TEMPORAL_ADD]))
        return Problem((h, w, 3), x_content, style_arrays, evaluator, lw,
                       engine.model(spec)[1], content_rgb)
    if temporal is not None:
        fixed |= temporal.fixed()
    manifest, session = engine.loss_session(spec.guided, temporal is not None)
    return Problem((h, w, 3), x_content, style_arrays,
                   Evaluator(session, loss_io(spec, temporal is not None), fixed,
                             engine.device), lw, manifest, content_rgb)


def _fixed_inputs(spec, lw: LossWeights, content_feats: dict, style_feats: list[dict],
                  guides: np.ndarray | None, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Every input of the loss graph but the image: targets (style Grams blended, or one
    per region with masks), guides, weights and the layers' 1/size factors."""
    fixed = {f"target_{n}": content_feats[f"features_{n}"] for n in spec.content_layers}
    n_styles = len(style_feats)
    blend = np.asarray(lw.style_blend if lw.style_blend is not None else [1.0] * n_styles,
                       np.float64)
    blend = blend / blend.sum()
    for n in spec.style_layers:
        per_style = [f[f"gram_{n}"] for f in style_feats]
        fixed[f"target_gram_{n}"] = (  # masks: one target per region, (R, C, C)
            np.stack(per_style) if guides is not None
            else sum(b * g.astype(np.float64) for b, g in zip(blend, per_style)))
    if guides is not None:
        fixed["guides"] = guides
    layer_w = np.asarray(lw.style_layer_weights if lw.style_layer_weights is not None
                         else [1.0] * len(spec.style_layers), np.float64)
    h, w = hw
    fixed["content_weights"] = np.full(len(spec.content_layers), lw.content_weight)
    fixed["style_weights"] = lw.style_weight * layer_w
    fixed["tv_weight"] = np.asarray(lw.tv_weight_at(h, w))
    fixed["inv_sizes"] = inv_sizes(spec, h, w)
    return fixed


def _guides(masks, n_styles: int, size: tuple[int, int], lw: LossWeights,
            max_image_pixels: int | None, log) -> np.ndarray:
    """Masks → (R, 1, H, W) float32 guides in [0, 1] at the content's size."""
    masks = listed(masks)
    if len(masks) != n_styles:
        raise BadInput(f"{len(masks)} masks for {n_styles} style images: give one per style")
    if lw.style_blend is not None:
        raise BadInput("--style-blend does not apply with --masks: each style has its region")
    out = []
    for i, m in enumerate(masks, start=1):
        img = load_image(m, f"mask {i}", max_image_pixels, log)
        if abs(img.size[0] / img.size[1] - size[0] / size[1]) > 0.02 * size[0] / size[1]:
            raise BadInput(f"mask {i} is {img.size[0]}×{img.size[1]}, the content "
                           f"{size[0]}×{size[1]}: draw masks over the content image")
        g = np.asarray(img.convert("L").resize(size, Image.BILINEAR), np.float32) / 255
        if g.mean() < 1e-3:
            raise BadInput(f"mask {i} is black: it gives its style no region")
        out.append(g)
    return np.stack(out)[:, None]


def _hwc(x: np.ndarray) -> np.ndarray:
    return x[0].transpose(1, 2, 0).astype(np.float64)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def _colour_mode(mode: str, content: np.ndarray, styles: list[np.ndarray]):
    """(content as optimised, content in colour or None, styles) for a --preserve-colors mode."""
    if mode == "luminance":  # optimise luminance only; chroma comes back in Problem.finish
        cy = color.luminance(_hwc(content))
        grey_styles = [_nchw(color.grey(color.match_luminance(color.luminance(_hwc(s)), cy)))
                       for s in styles]
        return _nchw(color.grey(cy)), content, grey_styles
    if mode in ("histogram", "histogram-sym"):
        method = "cholesky" if mode == "histogram" else "symmetric"
        return content, None, [_nchw(color.match_histogram(_hwc(s), _hwc(content), method))
                               for s in styles]
    return content, None, styles
