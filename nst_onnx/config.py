"""Every setting a user can change, with its default, in one place.

Four dataclasses, one per concern; the CLI takes its defaults from them, the API accepts
them (or their fields as keyword arguments), and each checks its own values once:

* :class:`LossSpec` — which network the exported graphs compute (layers, pooling, guides);
  fixed at export, part of the model directory's name;
* :class:`EngineOptions` — where and how the graphs run (device, threads, model files);
* :class:`LossWeights` — the objective's run-time knobs (weights, blending, colour mode);
* :class:`RunOptions` — the optimisation (size, scales, iterations, optimiser).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import BadInput
from .vgg19 import canonical, min_size

DEFAULT_CONTENT_LAYERS = ("relu4_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
POOLINGS = ("max", "avg")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("lbfgs-onnx", "lbfgs", "adam")
INITS = ("content", "noise", "style")
COLOR_MODES = ("none", "luminance", "histogram", "histogram-sym", "post")

LOW, HIGH = 0.0, 255.0  # the pixel box every optimiser keeps the image in
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit (≈ 89 Mpx)
REFERENCE_PIXELS = 512 * 512  # where size-consistent weights equal the reference objective's
AUTO_MULTISCALE_FROM = 1024  # outputs this large run coarse-to-fine unless told otherwise
COARSEST = 512  # the auto plan halves down to here
DEFAULT_ITERATIONS = 500  # one scale
AUTO_ITERATIONS = (120, 35)  # several scales, none given: the coarsest, then each finer one
STOP_WINDOW = 25  # the stop rule looks at the loss this many iterations back …
STOP_TOLERANCE = 7e-3  # … and ends a run whose loss fell by less than this (relative);
#                        fitted on three pairs at 512 px (README, When a picture is finished)
MAX_HISTORY = 1000  # L-BFGS pairs; the memory estimate refuses far fewer at large sizes
DEFAULT_SIZE = 512  # longest side of the output when none is given
CHECKPOINT_EVERY = 60.0  # seconds of work between checkpoints
NAME_TEMPLATE = "{content}__{style}.png"  # batch output names
RESULT = "result"  # field metadata: False for settings that do not change the picture
FINGERPRINT = "fingerprint"  # … False for settings recorded but not fingerprinted


@dataclass(frozen=True)
class LossSpec:
    """Which layers the loss taps and which pooling the network uses (fixed at export)."""

    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    pooling: str = "max"
    guided: bool = False  # style loss per region: guided Gram matrices (Gatys et al. 2017)

    def __post_init__(self):
        object.__setattr__(self, "content_layers", _layers(self.content_layers, "content"))
        object.__setattr__(self, "style_layers", _layers(self.style_layers, "style"))
        if self.pooling not in POOLINGS:
            raise BadInput(f"unknown pooling {self.pooling!r}: use max or avg")

    @property
    def all_layers(self) -> tuple[str, ...]:
        return self.content_layers + self.style_layers

    @property
    def min_side(self) -> int:
        """Smallest image side for which every chosen layer has at least one pixel."""
        return min_size(list(self.all_layers))

    @property
    def key(self) -> str:
        """Short stable name for this configuration (model directory name)."""
        c = "+".join(n[4:] for n in self.content_layers)
        s = "+".join(n[4:] for n in self.style_layers)
        return f"vgg19-{self.pooling}-c{c}-s{s}" + ("-guided" if self.guided else "")


def _layers(names, what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        names = names.split(",")
    out = tuple(dict.fromkeys(canonical(n) for n in names if n.strip()))
    if what == "style" and not out:
        raise BadInput("no style layers given: name at least one, e.g. relu1_1")
    return out


@dataclass
class EngineOptions:
    """Where the graphs come from and where they run; one per :class:`StyleTransfer`."""

    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # onnxruntime intra-op threads on the CPU; None: physical cores
    models_dir: str | os.PathLike | None = None  # None: see graphs.export.default_models_dir
    weights: str | os.PathLike | None = None  # local weights file; None: the pinned download
    cache_dir: str | os.PathLike | None = None  # weights download cache
    tf32: bool = False  # CUDA: let Conv/MatMul use TF32 (faster, gradient no longer float32-exact)
    gpu_mem_limit_mb: float | None = None  # CUDA: cap onnxruntime's device arena
    debug: bool = False  # let onnxruntime's own log reach the terminal

    def validate(self) -> None:
        if self.device not in DEVICES:
            raise BadInput(f"unknown device {self.device!r}: use auto, cpu or cuda")
        if self.threads is not None and self.threads < 1:
            raise BadInput("--threads must be ≥ 1")
        if self.gpu_mem_limit_mb is not None and not (
                math.isfinite(self.gpu_mem_limit_mb) and self.gpu_mem_limit_mb >= 64):
            raise BadInput("--gpu-mem-limit must be a number of MB ≥ 64")


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
        and paintings it grows with the pixel count (docs/design.md), so a fixed
        ``tv_weight`` smooths a 1024 px result 4× harder than a 512 px one.
        ``size_consistent`` scales it to a per-pixel weight referenced to 512×512
        (``tv_weight·512²/(h·w)``): identical at 512×512, the same balance at any size.
        False: the reference objective (jcjohnson/neural-style's sum).
        """
        return self.tv_weight * (REFERENCE_PIXELS / (h * w) if self.size_consistent else 1.0)

    def validate(self, n_styles: int, n_style_layers: int) -> None:
        for name in ("content_weight", "style_weight", "tv_weight"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise BadInput(f"--{name.replace('_', '-')} must be a finite number ≥ 0")
        if not (self.style_scale > 0 and math.isfinite(self.style_scale)):
            raise BadInput("--style-scale must be a finite number > 0")
        if self.preserve_colors not in COLOR_MODES:
            raise BadInput(f"unknown --preserve-colors {self.preserve_colors!r}: use "
                           + ", ".join(COLOR_MODES))
        if self.style_blend is not None:
            if len(self.style_blend) != n_styles:
                raise BadInput(f"--style-blend has {len(self.style_blend)} weights for "
                               f"{n_styles} style images: give one per style")
            if min(self.style_blend) < 0 or sum(self.style_blend) <= 0 \
                    or not all(math.isfinite(b) for b in self.style_blend):
                raise BadInput("--style-blend weights must be finite, ≥ 0 and not all zero")
        if self.style_layer_weights is not None:
            if len(self.style_layer_weights) != n_style_layers:
                raise BadInput(f"--style-layer-weights has {len(self.style_layer_weights)} "
                               f"values for {n_style_layers} style layers: give one per layer")
            if not all(v >= 0 and math.isfinite(v) for v in self.style_layer_weights):
                raise BadInput("--style-layer-weights must be finite numbers ≥ 0")


@dataclass
class RunOptions:
    """The optimisation: output size, coarse-to-fine plan, optimiser and its settings."""

    size: int | None = None  # longest side of the output; None: DEFAULT_SIZE (transfer), the
    #                          problem's own size (run)
    iterations: int | Sequence[int] | None = None  # None: see plan_scales
    scales: int | Sequence[int] | None = None  # None: auto (coarse-to-fine from 1024 px)
    init: str | os.PathLike = "content"  # content | noise | style | an image path
    seed: int = 0
    # lbfgs-onnx (projected L-BFGS as ONNX step graphs) | lbfgs (scipy L-BFGS-B) | adam.
    # lbfgs-onnx by measurement: the same loss as scipy at 500 iterations, 4–8% less time
    # per iteration on a 2-core CPU and 9× less on an H200, lower peak RSS (README)
    optimizer: str = "lbfgs-onnx"
    lr: float = 2.0  # Adam's step, in pixel levels
    # L-BFGS pairs. 20 by measurement (lbfgs-onnx, 512 px, CPU): the loss that 10 pairs
    # reach at iteration 268 is reached at 247, for 2% more time per iteration (README)
    history: int = 20
    max_image_pixels: int | None = field(  # refuse larger input headers (None: no limit)
        default=MAX_PIXELS, metadata={FINGERPRINT: False})
    # run even when the memory estimate exceeds what is available
    force: bool = field(default=False, metadata={RESULT: False})
    stop_tolerance: float | None = None  # None: STOP_TOLERANCE unless iterations are given
    # seconds of work between checkpoints (when the job has a checkpoint file); 0: never
    checkpoint_every: float = field(default=CHECKPOINT_EVERY, metadata={RESULT: False})

    @property
    def output_size(self) -> int:
        """The longest side of the output: ``size``, or DEFAULT_SIZE when none was given."""
        return DEFAULT_SIZE if self.size is None else self.size

    def stop_rule(self) -> float:
        """τ of the stop rule in force: a run ends once its loss fell by less than τ
        (relative) over the last STOP_WINDOW iterations; 0: never (``--iterations N`` means
        exactly N unless a tolerance is asked for too)."""
        if self.stop_tolerance is not None:
            return self.stop_tolerance
        return STOP_TOLERANCE if self.iterations is None else 0.0

    def validate(self) -> None:
        if self.size is not None and self.size < 1:
            raise BadInput("--size must be ≥ 1")
        if not (self.checkpoint_every >= 0 and math.isfinite(self.checkpoint_every)):
            raise BadInput("--checkpoint-every must be a number of seconds ≥ 0")
        if self.optimizer not in OPTIMIZERS:
            raise BadInput(f"unknown optimizer {self.optimizer!r}: use "
                           + ", ".join(OPTIMIZERS))
        if not 1 <= self.history <= MAX_HISTORY:
            raise BadInput(f"--history must be between 1 and {MAX_HISTORY}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise BadInput("--lr must be a finite number > 0")
        its = self.iterations
        if its is not None and min([its] if isinstance(its, int) else list(its) or [0]) < 1:
            raise BadInput("--iterations must be ≥ 1")
        if self.stop_tolerance is not None and not (0 <= self.stop_tolerance < 1):
            raise BadInput("--stop-tolerance must be between 0 and 1")
        if isinstance(self.init, str) and self.init not in INITS and not os.path.isfile(self.init):
            raise BadInput(f"--init {self.init!r}: not content, noise, style or an image file")


def split_settings(run: RunOptions | None = None, weights: LossWeights | None = None,
                   **overrides) -> tuple[RunOptions, LossWeights]:
    """``RunOptions`` and ``LossWeights`` with keyword overrides sorted into the right one,
    so the API can take ``size=256, style_weight=50`` as readily as the dataclasses."""
    run, weights = run or RunOptions(), weights or LossWeights()
    names = {f.name for f in dataclasses.fields(RunOptions)}
    run_kw = {k: v for k, v in overrides.items() if k in names}
    weight_names = {f.name for f in dataclasses.fields(LossWeights)}
    unknown = set(overrides) - names - weight_names
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    weight_kw = {k: v for k, v in overrides.items() if k in weight_names}
    return dataclasses.replace(run, **run_kw), dataclasses.replace(weights, **weight_kw)


def split_engine(engine: EngineOptions | None = None, spec: LossSpec | None = None,
                 **options) -> tuple[EngineOptions, LossSpec]:
    """``EngineOptions`` and ``LossSpec`` with keyword options sorted into the right one
    (``StyleTransfer(device="cpu", pooling="avg")``); ``guided`` is chosen per problem."""
    spec_names = {f.name for f in dataclasses.fields(LossSpec)} - {"guided"}
    spec = dataclasses.replace(spec or LossSpec(),
                               **{k: v for k, v in options.items() if k in spec_names})
    engine = dataclasses.replace(engine or EngineOptions(),
                                 **{k: v for k, v in options.items() if k not in spec_names})
    return engine, spec


def settings_dict(run: RunOptions, weights: LossWeights, spec: LossSpec) -> dict:
    """Everything that decides a result, as plain JSON-able values (PNG metadata, --json);
    fields marked ``RESULT: False`` are left out, the size is the one in force."""
    out = {}
    for f in dataclasses.fields(run):
        if f.metadata.get(RESULT, True):
            v = getattr(run, f.name)
            out[f.name] = str(v) if isinstance(v, os.PathLike) else v
    out["size"] = run.output_size
    return {**out, "pooling": spec.pooling, "content_layers": list(spec.content_layers),
            "style_layers": list(spec.style_layers), **dataclasses.asdict(weights)}


def fingerprint_settings(run: RunOptions, weights: LossWeights, spec: LossSpec) -> dict:
    """:func:`settings_dict` without what is recorded but does not decide the pixels
    (fields marked ``FINGERPRINT: False``): the settings a job's fingerprint hashes."""
    out = settings_dict(run, weights, spec)
    for f in dataclasses.fields(run):
        if not f.metadata.get(FINGERPRINT, True):
            out.pop(f.name, None)
    return out
