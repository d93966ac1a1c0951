"""Will it fit? Peak memory of a run, estimated before it starts.

Calibrated on the 2-core CPU machine this project is built on (onnxruntime 1.32, default
layers, max pooling) by ``scripts/bench_memory.py``: the peak resident memory of a whole
``nst stylize`` run grows linearly with the pixels evaluated —

    peak_MB ≈ base + (per_mpx + per_pair · history + REGION_MB · regions) · megapixels

where megapixels is the larger of the output's and the (largest) style image's pixel count
(the style's features are computed once, before the run) and (base, per_mpx, per_pair) depend on
the optimiser (``CPU_MB``): scipy keeps its float64 iterate, gradient and history
pairs on the host; lbfgs-onnx and adam keep float32 state in onnxruntime's arena.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from ..config import DEFAULT_HISTORY, FEWER_HISTORY, TILE_GRID, RunOptions
from ..errors import BadInput

RUN = RunOptions()  # the defaults

# Per optimiser: (base MB, MB per megapixel besides the history, MB per megapixel per L-BFGS
# pair), least-squares fits rounded up to the safe side (README, Memory estimate). scipy's: 2
# iterations at 256–1024 px plus its float64 pairs by size, checked on 1024×768 runs of 35–40
# iterations; lbfgs-onnx's: 25 iterations at 256–1024 px with history 10 and 20, when its
# pairs cost twice their 24 bytes per pixel (written in place since: a re-fit could not tell
# the history from run-to-run noise, and 2048×1536 with 10 pairs still peaks as estimated,
# docs/benchmarks.md); adam's: 10 iterations at 256–768 px.
CPU_MB = {"lbfgs": (300.0, 3350.0, 48.0), "lbfgs-onnx": (350.0, 2850.0, 50.0),
          "adam": (400.0, 2450.0, 0.0)}
REGION_MB = 390.0  # per megapixel per --masks region: F⊙T_r at every style layer (measured:
#                    2 regions at 512×384 peaked at 1175 MB against 1023 MB without masks)
HEADROOM = 0.9  # refuse above 90% of what is available


def _per_mpx(optimizer: str, history: int, regions: int) -> float:
    _, per, per_pair = CPU_MB[optimizer]
    return per + per_pair * history + REGION_MB * regions


def estimate_peak_mb(megapixels: float, history: int = RUN.pairs, regions: int = 0,
                     optimizer: str = RUN.optimizer) -> float:
    return CPU_MB[optimizer][0] + _per_mpx(optimizer, history, regions) * megapixels


def available_mb() -> float | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def largest_side(budget_mb: float, aspect: float, history: int = RUN.pairs, regions: int = 0,
                 optimizer: str = RUN.optimizer) -> int:
    """Longest side (px) whose estimate stays within ``budget_mb``; aspect = short/long ≤ 1."""
    mpx = max(budget_mb - CPU_MB[optimizer][0], 0.0) / _per_mpx(optimizer, history, regions)
    return int(math.sqrt(mpx * 1e6 / max(aspect, 1e-6)))


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (VmHWM, Linux); None where unknown."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f
                         if line.startswith("VmHWM")), None)
    except OSError:
        return None


# --------------------------------------------------------------------------- CUDA

# Calibrated on an H200 (scripts/gpu_check.py, memory and calibration sections: one process
# per run, its nvidia-smi delta; README, GPU). A scipy run used 1668 / 3616 / 11276 MB at
# 512² / 1024² / 2048² (fitted) and 2992 / 6892 MB at 768×1024 / 1536² (predicted within
# 0.3%). The device optimisers add their step sessions (a constant) and image-sized state:
# lbfgs-onnx 2680 / 5252 / 15408 MB at 512² / 1024² / 2048² with history 10, 4996 / 5508 MB
# with history 5 / 20 at 1024²; adam 4444 MB at 1024².
GPU_BASE_MB = 1050.0  # CUDA context, cuDNN/cuBLAS handles and workspaces, the weights
GPU_SLACK = 1.4  # what the arena holds over the loss graph's tensors counted below
GPU_STEPS_MB = 800.0  # the device optimiser's step sessions (handles, workspaces)


def device_state_images(optimizer: str, history: int) -> int:
    """Image-sized float32 tensors a device optimiser holds at its peak (fitted above):
    lbfgs-onnx 2 per history pair (S and Y, written in place; the fit had 3, when the
    update made new copies — one less is derived, not re-measured on a GPU) and ~34 for the
    step graphs' intermediates; adam its moments, iterate and gradient; scipy none."""
    return {"lbfgs-onnx": 34 + 2 * history, "adam": 6}.get(optimizer, 0)


def estimate_gpu_mb(spec, h: int, w: int, regions: int = 0, state_images: int = 0) -> float:
    """Device memory of a run at h×w, counted from tensor sizes and scaled by factors
    measured on a GPU (above): what the forward pass keeps for the backward (bool ReLU
    masks, max-pool winners, the tapped features as float32, ×regions with masks),
    three float32 tensors of the largest layer in flight, and a device optimiser's
    ``state_images`` (:func:`device_state_images`)."""
    from ..vgg19 import channels, convs_up_to, downsampling, pool_before

    kept = peak = 0.0
    for conv in convs_up_to(list(spec.all_layers)):
        d = downsampling(conv.relu)
        e = conv.out_channels * (h >> d) * (w >> d)
        kept += e  # bool mask
        if pool_before(conv):
            # fitted with int64 indices + the pooled mask (9 bytes a pooled element); the
            # winner mask keeps 5 but adds an input-sized transient to the backward (CPU,
            # 1024×768: +8% peak). Not yet re-measured on a GPU, so the fit stands.
            kept += 9 * conv.in_channels * (h >> d) * (w >> d)
        peak = max(peak, e)
    for layer in spec.all_layers:
        d = downsampling(layer)
        kept += 4 * channels(layer) * (h >> d) * (w >> d) * max(1, regions)
    steps = GPU_STEPS_MB + state_images * 3 * h * w * 4 / 2 ** 20 if state_images else 0.0
    return GPU_BASE_MB + GPU_SLACK * (kept + 3 * 4 * peak) / 2 ** 20 + steps


def gpu_largest_side(spec, budget_mb: float, aspect: float, regions: int = 0,
                     state_images: int = 0) -> int:
    """Longest side (px) whose GPU estimate stays within ``budget_mb``; aspect = short/long."""
    return _bisect(lambda side: estimate_gpu_mb(spec, max(1, int(side * aspect)), side,
                                                regions, state_images) <= budget_mb, 16, 16384)


def _bisect(fits, lo: int, hi: int) -> int:
    """The largest side in [lo, hi] that ``fits`` (estimates grow with the side; lo if none)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def gpu_memory_mb() -> tuple[float, float] | None:
    """(free, total) MB of GPU 0 from nvidia-smi; None where it is not available."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=memory.free,memory.total",
                              "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout
        free, total = (float(v) for v in out.strip().splitlines()[0].split(","))
        return free, total
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- the check


# --------------------------------------------------------------------------- tiles

TILE_SIDES = (2048, 1536, 1024, 768, 512, 384, 256, 128)  # what ``--tile-size auto`` tries
SMALL_TILE = 1024  # below it the halos cost over 20% more pixels: the default history is
#                   lowered before tiles get this small
TILE_COST_SLACK = 1.1  # auto takes the smallest tile whose passes cost at most this much
#                        more than the cheapest that fits: at 4096×3072 on 24 GB, 1024 px
#                        tiles (1.23× the pixels, ~14.5 GB) over 1536 (1.13×, ~18.4 GB)
VECTOR_MB = 550.0  # per megapixel: what a tiled run still keeps image-sized (the image, its
#                    gradient, the content target, the optimiser's vectors besides its
#                    history, the step graphs' intermediates); the larger of two runs (the
#                    safe side), not a fit like CPU_MB's: 2048×1536 in tiles of 1024 at
#                    8.9 GB besides its checkpoint copies (AMD EPYC; ~550 MB/Mpx), and
#                    4096×3072 in 12 tiles of 1024 with 10 pairs to the end at 15.5 GiB once
#                    the step graphs shrank the arena (Intel Xeon; ~320 MB/Mpx; 20.4 GiB and
#                    ~750 before). Both ran with the history copied at each update, which
#                    the per-pair term still counts (written in place since: on the safe side)


def window_shape(h: int, w: int, tile: int, margin: int) -> tuple[int, int]:
    """The largest window of a tiled h×w image: a core and its halo on both sides."""
    return min(h, tile + 2 * margin), min(w, tile + 2 * margin)


def estimate_tiled_mb(device: str, spec, h: int, w: int, tile: int, regions: int,
                      run: RunOptions) -> float:
    """Peak memory of a tiled run: the network on the largest window (with masks, its
    guided features too), the image-sized vectors, the masks and the optimiser's history on
    the whole image."""
    from ..vgg19 import halo

    wh, ww = window_shape(h, w, tile, halo(list(spec.all_layers)))
    mpx, window_mpx = h * w / 1e6, wh * ww / 1e6
    masks = 4 * regions * mpx  # the guides, float32, whole
    if device == "cuda":
        state = device_state_images(run.optimizer, run.pairs) + WINDOW_MOVES_IMAGES
        return estimate_gpu_mb(dataclasses.replace(spec, guided=regions > 0), wh, ww, regions) \
            + (state + 6) * 12 * h * w / 2 ** 20 + masks + _window_crops_mb(spec, h, w, tile,
                                                                             regions)
    base, per, per_pair = CPU_MB[run.optimizer]
    return base + (per - VECTOR_MB + REGION_MB * regions) * window_mpx \
        + (VECTOR_MB + per_pair * run.pairs) * mpx + checkpoint_mb(run, mpx) + masks


WINDOW_MOVES_IMAGES = 4  # on a GPU, image-sized tensors of the window graphs: the zero the
#                         gradient starts from, the sum so far, the next, Pad's output
#                         (derived from the graphs, not measured on a GPU)


def _window_crops_mb(spec, h: int, w: int, tile: int, regions: int) -> float:
    """On a GPU, every window's fixed inputs kept there: its crops of the content targets
    and of the masks (float32), the windows overlapping by their halos."""
    from ..vgg19 import channels, downsampling

    per_pixel = sum(4 * channels(n) / 4 ** downsampling(n) for n in spec.content_layers)
    return window_share(spec, h, w, tile) * (per_pixel + 4 * regions) * h * w / 2 ** 20


def checkpoint_mb(run: RunOptions, mpx: float) -> float:
    """What writing a checkpoint holds on the host besides the run: the image, fetched as
    float64 and written as float32. The optimiser's state adds nothing on the CPU: its
    arrays are the arena's own (to_host), and L-BFGS's ring is written row by row
    (run.progress.Rows)."""
    return 36 * mpx if run.checkpoint_every else 0.0


def _untiled_mb(device: str, spec, h: int, w: int, style_pixels: int, regions: int,
                run: RunOptions) -> float:
    if device == "cuda":
        spec = dataclasses.replace(spec, guided=regions > 0)
        return estimate_gpu_mb(spec, h, w, regions, device_state_images(run.optimizer,
                                                                        run.pairs))
    return estimate_peak_mb(max(h * w, style_pixels) / 1e6, run.pairs, regions, run.optimizer)


def _free_mb(device: str) -> float | None:
    if device == "cuda":
        mem = gpu_memory_mb()
        return None if mem is None else mem[0]
    return available_mb()


def choose_tile(device: str, spec, h: int, w: int, style_pixels: int, regions: int,
                run: RunOptions, free: float | None) -> int | None:
    """The tile side for an h×w run: none with ``--tile-size 0``, or where one tile
    would hold the image; with ``auto`` none where the untiled run fits, else, of the
    :data:`TILE_SIDES` below the image's side that fit, the smallest whose windows cost at
    most :data:`TILE_COST_SLACK` times the cheapest's and not below :data:`SMALL_TILE`
    unless the largest that fits is (memory to spare where it costs little time; the
    smallest side when none fits: the check then refuses). ``free``: the free memory, MB,
    as the job began (None: unknown, so untiled) — read once by the caller: this process's
    own arena, which a later scale reuses, must not look taken."""
    tile = run.tile_size
    if tile is None:
        return None
    if tile != "auto":
        return tile if max(h, w) > tile else None
    if free is None or _untiled_mb(device, spec, h, w, style_pixels, regions, run) \
            <= HEADROOM * free:
        return None
    sides = [t for t in TILE_SIDES if t < max(h, w)]
    if not sides:  # one tile would hold the whole image: tiles cannot help
        return None
    fits = [t for t in sides if estimate_tiled_mb(device, spec, h, w, t, regions, run)
            <= HEADROOM * free]
    if not fits:
        return sides[-1]
    cost = {t: window_share(spec, h, w, t) for t in fits}
    return min(t for t in fits if cost[t] <= TILE_COST_SLACK * min(cost.values())
               and (t >= SMALL_TILE or t == fits[0]))


def window_share(spec, h: int, w: int, tile: int) -> float:
    """Σ window pixels / image pixels: what each pass of a tiled evaluation costs."""
    from ..vgg19 import halo

    return _window_share(halo(list(spec.all_layers), TILE_GRID), h, w, tile)


@functools.lru_cache(maxsize=4096)
def _window_share(margin: int, h: int, w: int, tile: int) -> float:
    # the planner asks for the same plans many times over (every side × every history)
    from .tiled import plan_tiles, window_pixels

    return window_pixels(plan_tiles(h, w, tile, margin)) / (h * w)


def what_of(device: str) -> str:
    return "GPU memory" if device == "cuda" else "memory"


def _plan(device: str, spec, hw: tuple[int, int], style_pixels: int, regions: int,
          run: RunOptions, avail: float | None, log) -> tuple[int | None, float, int | None]:
    """(tile, estimate MB, the history if lowered) of a run at its final size ``hw``: the
    default history is lowered (said in one line) where it would not fit, or only beside
    tiles under :data:`SMALL_TILE` px."""
    fh, fw = hw

    def plan(run: RunOptions) -> tuple[int | None, float]:
        tile = choose_tile(device, spec, fh, fw, style_pixels, regions, run, avail)
        return tile, (estimate_tiled_mb(device, spec, fh, fw, tile, regions, run) if tile
                      else _untiled_mb(device, spec, fh, fw, style_pixels, regions, run))

    def comfortable(tile: int | None, est: float) -> bool:
        return est <= budget and (not tile or tile >= SMALL_TILE)
    tile, est = plan(run)
    budget = HEADROOM * avail if avail is not None else math.inf
    if comfortable(tile, est) or run.history is not None \
            or run.optimizer == "adam":  # adam keeps no history
        return tile, est, None
    fits = [(n, *plan(dataclasses.replace(run, history=n))) for n in FEWER_HISTORY]
    fits = [f for f in fits if f[2] <= budget]
    # tiles of SMALL_TILE px or more with fewer pairs; else, only where the default does
    # not fit at all, the first history that fits in any tiles
    fewer = [f for f in fits if comfortable(*f[1:])] or (fits if est > budget else [])
    if not fewer:
        return tile, est, None
    pairs, tile, est = fewer[0]
    log(f"note: L-BFGS history {pairs} (not {DEFAULT_HISTORY}): at {fw}×{fh} "
        f"{DEFAULT_HISTORY} pairs would not fit in the free {what_of(device)}"
        + (f" beside tiles of {SMALL_TILE} px or more" if tile else "") + "; --history sets it")
    return tile, est, pairs


def check_memory(device: str, spec, shape: tuple[int, int], style_pixels: int, regions: int,
                 final_size: int, run: RunOptions, log, style_scale: float = 1.0) -> dict:
    """Estimate a run's peak memory at its final size — host memory on the CPU, device
    memory on a GPU — from its first scale's ``shape`` (H, W) and its largest style's pixels
    there, tiled where :func:`choose_tile` tiles it, and refuse (BadInput) when it will not
    fit, unless ``run.force``; where the style images are the larger, the advice is a
    smaller ``--style-scale``. Returns what was estimated (``tile_size``: at the final
    size)."""
    h, w = shape
    grow = (final_size / max(h, w)) ** 2
    aspect = min(h, w) / max(h, w)
    fh, fw = round(h * grow ** 0.5), round(w * grow ** 0.5)
    style_final = round(style_pixels * grow)
    avail = _free_mb(device)  # read once (on a GPU it runs nvidia-smi)

    tile, est, pairs = _plan(device, spec, (fh, fw), style_final, regions, run, avail, log)
    what = what_of(device)
    if device == "cuda":
        info = {"pixels": fh * fw, "estimated_gpu_mb": round(est),
                "gpu_free_mb": None if avail is None else round(avail),
                "estimate": "calibrated on an H200" + (" (tiles: estimated)" if tile else ""),
                "device": device}
    else:
        info = {"megapixels": round(max(fh * fw, style_final) / 1e6, 4),
                "estimated_peak_mb": round(est),
                "available_mb": None if avail is None else round(avail), "device": device}
    info["tile_size"] = tile
    if pairs is not None:
        info["history"] = pairs
    if avail is not None and est > HEADROOM * avail:
        side = _largest(device, spec, HEADROOM * avail, aspect, regions, run, tile)
        advice = (f"use --size {side} or less" if side >= 16 else
                  f"too little for any size: free some {what}")
        if style_pixels > h * w and device != "cuda" and not tile:  # the style is the larger
            fits = side * side * aspect / (style_pixels * grow)
            advice = f"use --style-scale {style_scale * fits ** 0.5:.2g} or less"
        msg = (f"this run needs about {est / 1024:.1f} GB of {what}"
               + (f" in tiles of {tile} px" if tile else "")
               + f" and {avail / 1024:.1f} GB is free: {advice}, or pass --force")
        if not run.force:
            raise BadInput(msg)
        log(f"warning: {msg} (--force given)")
    return info


def _largest(device: str, spec, budget: float, aspect: float, regions: int, run: RunOptions,
             tile: int | None) -> int:
    """The largest longest side whose estimate fits ``budget``: untiled, or in tiles of
    ``tile`` px (then the image-sized part grows, the window stays)."""
    if not tile:
        if device == "cuda":
            return gpu_largest_side(spec, budget, aspect, regions,
                                    device_state_images(run.optimizer, run.pairs))
        return largest_side(budget, aspect, run.pairs, regions, run.optimizer)
    def fits(side: int) -> bool:
        return estimate_tiled_mb(device, spec, max(1, int(side * aspect)), side, tile, regions,
                                 run) <= budget
    return _bisect(fits, 16, 65536) if fits(16) else 0
