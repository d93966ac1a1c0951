"""The public Python API: ``StyleTransfer`` → ``prepare`` a ``Problem`` → ``stylize``.

    st = StyleTransfer(device="cpu")            # finds or exports the model
    img = st.stylize("photo.jpg", "painting.jpg", size=512, iterations=500)

    problem = st.prepare("photo.jpg", ["a.jpg", "b.jpg"], size=256, style_blend=[0.7, 0.3])
    loss, grad = problem.loss_and_grad(x)       # x: float64 (H, W, 3), RGB in [0, 255]

The second form lets another program drive its own optimiser.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from . import color
from .errors import BadInput
from .export import export_model, read_manifest
from .graph import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, LossSpec
from .images import MAX_PIXELS, fit_longest_side, load_image, to_nchw, to_pil
from .optimize import Interrupted, OptimizeResult, Progress, adam, lbfgs
from .runtime import (
    Evaluator,
    Terms,
    make_session,
    physical_cores,
    release_free_memory,
    resolve_device,
)
from .vgg19 import min_size

OPTIMIZERS = ("lbfgs", "adam")
REFERENCE_PIXELS = 512 * 512  # where size-consistent weights equal the reference objective's


@dataclass
class LossWeights:
    """The objective's knobs (jcjohnson/neural-style's defaults and meaning)."""

    content_weight: float = 5.0
    style_weight: float = 100.0  # applies to each style layer
    tv_weight: float = 1e-3
    style_layer_weights: Sequence[float] | None = None  # multipliers, one per style layer
    style_blend: Sequence[float] | None = None  # one per style image; normalised to sum 1
    style_scale: float = 1.0  # style image size relative to the output size
    preserve_colors: str = "none"  # none | luminance | histogram | histogram-sym | post
    size_consistent: bool = True  # TV per pixel, as at 512×512: see tv_weight_at()

    def tv_weight_at(self, h: int, w: int) -> float:
        """The TV weight the graph gets for an h×w image.

        Content and style terms are means (the Gram is divided by C·h·w), so their balance
        does not depend on the image size; the TV term is a sum over pixels, and for photos
        and paintings it grows with the pixel count (×4.6–5 per doubling of the side,
        measured on the shared images), so a fixed ``tv_weight`` smooths a 1024 px result 4×
        harder than a 512 px one. ``size_consistent`` scales it to a per-pixel weight
        referenced to 512×512 (``tv_weight·512²/(h·w)``): identical at 512×512, and the same
        weights keep the same balance at any size. False: the reference objective of
        DESIGN.md (jcjohnson/neural-style's sum), for comparing loss values with it.
        """
        return self.tv_weight * (REFERENCE_PIXELS / (h * w) if self.size_consistent else 1.0)


@dataclass
class Problem:
    """One content, its style targets and weights: the loss and its gradient at any image."""

    shape: tuple[int, int, int]  # (H, W, 3)
    content: np.ndarray  # float32 (1, 3, H, W), the resized content
    styles: list[np.ndarray]  # float32 (1, 3, h, w) each, as used for the targets
    evaluator: Evaluator
    weights: LossWeights
    content_rgb: np.ndarray | None = None  # the content in colour, when ``content`` is not

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

    def initial(self, init: str | os.PathLike = "content", seed: int = 0) -> np.ndarray:
        """Starting image (3, H, W) float64: 'content', 'noise', 'style' or an image path."""
        h, w = self.shape[:2]
        if isinstance(init, np.ndarray):  # an earlier result (3, h', w'): upscale (Lanczos)
            return to_nchw(to_pil(init[None]).resize((w, h), Image.LANCZOS))[0].astype(np.float64)
        if init == "content":
            return self.content[0].astype(np.float64)
        if init == "noise":
            return np.random.default_rng(seed).uniform(0, 255, (3, h, w))

        img = Image.fromarray(np.uint8(np.clip(self.styles[0][0].transpose(1, 2, 0), 0, 255))) \
            if init == "style" else load_image(init, "init image")
        return to_nchw(img.resize((w, h), Image.LANCZOS))[0].astype(np.float64)


@dataclass
class Result:
    """A finished run: the image and how it got there."""

    image: Image.Image
    optimize: OptimizeResult
    settings: dict = field(default_factory=dict)
    scales: list[dict] = field(default_factory=list)  # per scale, for coarse-to-fine runs

    def summary(self) -> dict:
        """Totals over all scales; initial loss of the first scale, final of the last."""
        o = self.optimize
        scales = self.scales or [{"iterations": o.iterations, "evaluations": o.evaluations,
                                  "seconds": o.seconds, "initial_loss": o.initial_loss,
                                  "initial_terms": o.initial_terms}]
        iterations = sum(s["iterations"] for s in scales)
        seconds = sum(s["seconds"] for s in scales)
        return {"iterations": iterations,
                "evaluations": sum(s["evaluations"] for s in scales),
                "initial_loss": scales[0]["initial_loss"],
                "initial_terms": scales[0]["initial_terms"],
                "final_loss": o.loss, "final_terms": o.terms, "seconds": seconds,
                "seconds_per_iteration": seconds / max(iterations, 1),
                "stop_reason": o.stop_reason, "restarts": o.restarts, "scales": self.scales}


def _listed(x) -> list:
    """One image or a list/tuple of them → a list."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _hwc(x: np.ndarray) -> np.ndarray:
    return x[0].transpose(1, 2, 0).astype(np.float64)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def check_run_options(iterations: int, optimizer: str, lr: float, history: int) -> None:
    """Refuse bad optimiser settings before any work starts."""
    if iterations < 1:
        raise BadInput("--iterations must be ≥ 1")
    if optimizer not in OPTIMIZERS:
        raise BadInput(f"unknown optimizer {optimizer!r}: use lbfgs or adam")
    if history < 1:
        raise BadInput("--history must be ≥ 1")
    if not (lr > 0 and np.isfinite(lr)):
        raise BadInput("--lr must be a finite number > 0")


class StyleTransfer:
    """Style transfer with one exported model on one device; reuse it for many images."""

    def __init__(self, device: str = "auto", threads: int | None = None, pooling: str = "max",
                 content_layers: Sequence[str] = DEFAULT_CONTENT_LAYERS,
                 style_layers: Sequence[str] = DEFAULT_STYLE_LAYERS,
                 models_dir: str | os.PathLike | None = None,
                 weights: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 log: Callable[[str], None] = print):
        self.spec = LossSpec(tuple(content_layers), tuple(style_layers), pooling)
        self.log = log
        self.device = resolve_device(device)
        self.threads = threads or physical_cores()
        self._export = dict(models_dir=Path(models_dir) if models_dir else None,
                            weights_path=weights,
                            cache_dir=Path(cache_dir) if cache_dir else None, log=log)
        self.model_dir = export_model(self.spec, **self._export)
        self.manifest = read_manifest(self.model_dir)
        self._loss = make_session(self.model_dir / "loss.onnx", self.device, self.threads)
        self._guided_loss = None  # built on first use of masks
        self.guided_manifest: dict | None = None

    def _guided_session(self):
        """The loss with guided Grams (per-region style), exported and loaded on first use."""
        if self._guided_loss is None:
            model_dir = export_model(replace(self.spec, guided=True), **self._export)
            self.guided_manifest = read_manifest(model_dir)
            self._guided_loss = make_session(model_dir / "loss.onnx", self.device, self.threads)
        return self._guided_loss

    @property
    def min_size(self) -> int:
        return min_size(list(self.spec.all_layers))

    def features(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """(1, 3, H, W) float32 images → [{'features_relu4_2': …, 'gram_relu1_1': …}, …].

        The features session lives only for this call: targets are computed once per
        problem, and its weights (~60 MB) would otherwise sit beside the loss session's.
        """
        session = make_session(self.model_dir / "features.onnx", self.device, self.threads)
        names = [o.name for o in session.get_outputs()]
        out = [dict(zip(names, session.run(None, {"image": x}))) for x in images]
        del session
        release_free_memory()
        return out

    def prepare(self, content, styles, size: int = 512,
                max_image_pixels: int | None = MAX_PIXELS, masks=None, **weights) -> Problem:
        """Load and resize the images, compute the targets once, and bind them.

        ``max_image_pixels``: refuse image files whose header claims more (None: no limit).
        ``masks``: one greyscale image per style, drawn over the content (white: this style,
        black: not it; grey blends): spatial control by guided Gram matrices.
        """
        lw = LossWeights(**weights)
        styles = _listed(styles)
        if not styles:
            raise BadInput("give at least one style image")
        self._check(lw, len(styles), size)
        content_img = fit_longest_side(
            load_image(content, "content image", max_image_pixels, self.log), size)
        if min(content_img.size) < self.min_size:
            raise BadInput(f"content image is {content_img.size[0]}×{content_img.size[1]} at "
                           f"--size {size}; the chosen layers need at least {self.min_size} px "
                           f"on each side: raise --size")
        style_side = max(self.min_size, round(size * lw.style_scale))
        style_arrays = []
        for i, s in enumerate(styles):
            img = fit_longest_side(
                load_image(s, f"style image {i + 1}", max_image_pixels, self.log), style_side)
            if min(img.size) < self.min_size:
                raise BadInput(f"style image {i + 1} is too narrow at this size "
                               f"({img.size[0]}×{img.size[1]}); raise --size or --style-scale")
            style_arrays.append(to_nchw(img))
        x_content = to_nchw(content_img)
        content_rgb = None
        mode = lw.preserve_colors
        if mode == "luminance":  # optimise luminance only; chroma comes back in finish()
            content_rgb = x_content
            c_hwc = x_content[0].transpose(1, 2, 0).astype(np.float64)
            cy = color.luminance(c_hwc)
            x_content = _nchw(color.grey(cy))
            style_arrays = [_nchw(color.grey(color.match_luminance(
                color.luminance(_hwc(s)), cy))) for s in style_arrays]
        elif mode in ("histogram", "histogram-sym"):
            method = "cholesky" if mode == "histogram" else "symmetric"
            c_hwc = x_content[0].transpose(1, 2, 0).astype(np.float64)
            style_arrays = [_nchw(color.match_histogram(_hwc(s), c_hwc, method))
                            for s in style_arrays]
        guides = None if masks is None else self._guides(masks, len(styles), content_img.size,
                                                         lw, max_image_pixels)
        content_feats, *style_feats = self.features([x_content, *style_arrays])
        fixed = {}
        for name, value in content_feats.items():
            if name.startswith("features_"):
                fixed["target_" + name[len("features_"):]] = value
        blend = np.asarray(lw.style_blend if lw.style_blend is not None else [1.0] * len(styles),
                           np.float64)
        blend = blend / blend.sum()
        for name in style_feats[0]:
            if name.startswith("gram_"):
                per_style = [f[name] for f in style_feats]
                fixed["target_" + name] = (  # masks: one target per region, (R, C, C)
                    np.stack(per_style) if guides is not None
                    else sum(b * g.astype(np.float64) for b, g in zip(blend, per_style)))
        if guides is not None:
            fixed["guides"] = guides
        layer_w = np.asarray(lw.style_layer_weights if lw.style_layer_weights is not None
                             else [1.0] * len(self.spec.style_layers), np.float64)
        fixed["content_weights"] = np.full(len(self.spec.content_layers), lw.content_weight)
        fixed["style_weights"] = lw.style_weight * layer_w
        h, w = x_content.shape[2:]
        fixed["tv_weight"] = np.asarray(lw.tv_weight_at(h, w))
        session = self._loss if guides is None else self._guided_session()
        return Problem((h, w, 3), x_content, style_arrays,
                       Evaluator(session, fixed, self.device), lw, content_rgb)

    def _guides(self, masks, n_styles: int, size: tuple[int, int], lw: LossWeights,
                max_image_pixels: int | None) -> np.ndarray:
        """Masks → (R, 1, H, W) float32 guides in [0, 1] at the content's size."""
        masks = _listed(masks)
        if len(masks) != n_styles:
            raise BadInput(f"{len(masks)} masks for {n_styles} style images: give one per style")
        if lw.style_blend is not None:
            raise BadInput("--style-blend does not apply with --masks: each style has its region")
        out = []
        for i, m in enumerate(masks, start=1):
            img = load_image(m, f"mask {i}", max_image_pixels, self.log)
            if abs(img.size[0] / img.size[1] - size[0] / size[1]) > 0.02 * size[0] / size[1]:
                raise BadInput(f"mask {i} is {img.size[0]}×{img.size[1]}, the content "
                               f"{size[0]}×{size[1]}: draw masks over the content image")
            g = np.asarray(img.convert("L").resize(size, Image.BILINEAR), np.float32) / 255
            if g.mean() < 1e-3:
                raise BadInput(f"mask {i} is black: it gives its style no region")
            out.append(g)
        return np.stack(out)[:, None]

    def _check(self, lw: LossWeights, n_styles: int, size: int) -> None:
        if size < self.min_size:
            raise BadInput(f"--size {size} is too small: the chosen layers need ≥ {self.min_size}")
        for name in ("content_weight", "style_weight", "tv_weight"):
            if not (getattr(lw, name) >= 0 and np.isfinite(getattr(lw, name))):
                raise BadInput(f"{name.replace('_', '-')} must be a finite number ≥ 0")
        if lw.style_scale <= 0:
            raise BadInput("--style-scale must be > 0")
        if lw.preserve_colors not in color.MODES:
            raise BadInput(f"unknown --preserve-colors {lw.preserve_colors!r}: use "
                           + ", ".join(color.MODES))
        if lw.style_blend is not None:
            if len(lw.style_blend) != n_styles:
                raise BadInput(f"--style-blend has {len(lw.style_blend)} weights for "
                               f"{n_styles} style images: give one per style")
            if min(lw.style_blend) < 0 or sum(lw.style_blend) <= 0:
                raise BadInput("--style-blend weights must be ≥ 0 and not all zero")
        if lw.style_layer_weights is not None and \
                len(lw.style_layer_weights) != len(self.spec.style_layers):
            raise BadInput(f"--style-layer-weights has {len(lw.style_layer_weights)} values for "
                           f"{len(self.spec.style_layers)} style layers: give one per layer")

    def run(self, problem: Problem, iterations: int = 500, init="content", seed: int = 0,
            optimizer: str = "lbfgs", lr: float = 2.0, history: int = 10,
            callback: Callable[[Progress], None] | None = None) -> Result:
        """Optimise the image; returns the best iterate seen, whatever stopped the run."""
        check_run_options(iterations, optimizer, lr, history)
        x0 = problem.initial(init, seed)
        if optimizer == "lbfgs":
            res = lbfgs(problem.evaluate, x0, iterations, history, callback)
        else:
            res = adam(problem.evaluate, x0, iterations, lr, callback)
        settings = {"size": max(problem.shape[:2]), "iterations": iterations, "init": str(init),
                    "seed": seed, "optimizer": optimizer, "lr": lr, "history": history,
                    "pooling": self.spec.pooling, "content_layers": list(self.spec.content_layers),
                    "style_layers": list(self.spec.style_layers), **asdict(problem.weights)}
        return Result(to_pil(problem.finish(res.x)[None]), res, settings)

    def transfer(self, content, styles, size: int = 512,
                 iterations: int | Sequence[int] | None = None,
                 scales: int | Sequence[int] | None = None, init="content", seed: int = 0,
                 optimizer: str = "lbfgs", lr: float = 2.0, history: int = 10,
                 callback: Callable[[Progress], None] | None = None,
                 before_run: Callable[[Problem, int], None] | None = None,
                 max_image_pixels: int | None = MAX_PIXELS, masks=None, **weights) -> Result:
        """Coarse-to-fine: optimise at each size of :func:`plan_scales`, each scale started
        from the previous result upscaled (Lanczos), targets recomputed per scale.

        ``before_run(problem, final_size)`` is called before each scale's optimisation
        (the CLI checks memory there). ``masks``: see :meth:`prepare`. Returns the final
        scale's result; its summary counts iterations, evaluations and seconds over all scales.
        """
        sizes, its = plan_scales(size, scales, iterations, self.min_size)
        if len(sizes) > 1:  # decode the files once, not once per scale
            content = load_image(content, "content image", max_image_pixels, self.log)
            styles = [load_image(s, f"style image {i + 1}", max_image_pixels, self.log)
                      for i, s in enumerate(_listed(styles))]
            if masks is not None:
                masks = [load_image(m, f"mask {i + 1}", max_image_pixels, self.log)
                         for i, m in enumerate(_listed(masks))]
        total = sum(its)
        done = 0
        per_scale = []
        start = init
        result = None
        for side, n in zip(sizes, its):
            try:
                problem = self.prepare(content, styles, side, max_image_pixels, masks, **weights)
            except Interrupted as e:
                if result is None:
                    raise
                result.optimize.interrupted = e  # keep the previous scale's image
                break
            if before_run:
                before_run(problem, sizes[-1])

            def shifted(p: Progress, offset=done, problem=problem) -> None:
                if callback:  # x as the output will look (chroma recombined where asked)
                    callback(Progress(offset + p.iteration, total, p.evaluations, p.loss,
                                      p.terms, p.seconds, problem.finish(p.x)))

            result = self.run(problem, n, start, seed, optimizer, lr, history, shifted)
            o = result.optimize
            per_scale.append({"size": side, "shape": list(problem.shape[:2]),
                              "iterations": o.iterations, "evaluations": o.evaluations,
                              "seconds": o.seconds, "initial_loss": o.initial_loss,
                              "initial_terms": o.initial_terms, "final_loss": o.loss,
                              "stop_reason": o.stop_reason})
            done += n
            start = o.x
            if o.interrupted is not None:
                break
        result.settings.update(size=sizes[-1], scales=sizes, iterations=its)
        result.scales = per_scale
        return result

    def stylize(self, content, styles, size: int = 512,
                iterations: int | Sequence[int] | None = None,
                scales: int | Sequence[int] | None = None, init="content", seed: int = 0,
                optimizer: str = "lbfgs", lr: float = 2.0, history: int = 10,
                callback: Callable[[Progress], None] | None = None, masks=None,
                **weights) -> Image.Image:
        """Content + style(s) → stylised PIL image. ``weights``: see :class:`LossWeights`;
        ``scales``: see :func:`plan_scales`; ``masks``: see :meth:`prepare`."""
        return self.transfer(content, styles, size, iterations, scales, init, seed, optimizer,
                             lr, history, callback, masks=masks, **weights).image


AUTO_MULTISCALE_FROM = 1024  # outputs this large run coarse-to-fine unless told otherwise
COARSEST = 512  # the auto plan halves down to here
DEFAULT_ITERATIONS = 500  # one scale
AUTO_ITERATIONS = (120, 35)  # several scales, none given: the coarsest, then each finer one


def plan_scales(size: int, scales: int | Sequence[int] | None,
                iterations: int | Sequence[int] | None = None,
                min_side: int = 16) -> tuple[list[int], list[int]]:
    """Sizes (longest side, coarse → fine) and iterations per scale.

    * ``scales`` None: one scale below 1024 px; from 1024 px up, halve down to ≥ 512 px
      (1024 → 512, 1024; 2048 → 512, 1024, 2048);
    * an int N: N sizes, each half the next, ending at ``size``;
    * a list: those sizes (increasing); the last is the output size.

    ``iterations``: None: 500 for one scale; for several, 120 at the coarsest and 35 at each
    finer one (measured in ``scripts/bench_multiscale.py``: upscaled coarse results are no
    better a start, loss for loss, than the content image, so the coarse scales are there for
    the composition — strokes sized for the smaller picture — and the fine ones to add detail;
    tubingen at 1024×768 takes ~8.6 min on 2 cores). One number N: N at the coarsest, falling
    geometrically to N/5 (at least 50) at the finest. Or one number per scale.
    """
    if size < min_side:
        raise BadInput(f"--size {size} is too small: the chosen layers need ≥ {min_side}")
    if scales is None:
        sizes = [size]
        while size >= AUTO_MULTISCALE_FROM and sizes[0] // 2 >= COARSEST:
            sizes.insert(0, sizes[0] // 2)
    elif isinstance(scales, int):
        if scales < 1:
            raise BadInput("--scales must be ≥ 1")
        sizes = sorted({max(min_side, round(size / 2 ** k)) for k in range(scales)})
    else:
        sizes = [int(v) for v in scales]
        if not sizes or sizes != sorted(set(sizes)) or sizes[0] < min_side:
            raise BadInput(f"--scales must be increasing sizes ≥ {min_side}, e.g. 256,512,1024")
    if iterations is None:
        its = [DEFAULT_ITERATIONS] if len(sizes) == 1 else \
            [AUTO_ITERATIONS[0]] + [AUTO_ITERATIONS[1]] * (len(sizes) - 1)
    elif isinstance(iterations, int):
        n = len(sizes)
        finest = min(iterations, max(50, iterations // 5))
        its = [round(iterations * (finest / iterations) ** (k / (n - 1))) if n > 1 else iterations
               for k in range(n)]
    else:
        its = [int(v) for v in iterations]
        if len(its) == 1:
            return plan_scales(size, sizes, its[0], min_side)
        if len(its) != len(sizes):
            raise BadInput(f"--iterations has {len(its)} values for {len(sizes)} scales: give "
                           "one per scale, or one for all")
    if min(its) < 1:
        raise BadInput("--iterations must be ≥ 1")
    return sizes, its
