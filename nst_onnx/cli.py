"""The ``nst`` command: parse, call :mod:`nst_onnx.api`, print.

Defaults come from the dataclasses of :mod:`nst_onnx.config`. Errors are one line on
stderr with exit code 2 (bad input) or 1 (failure); ``--debug`` shows the traceback.
Ctrl-C / SIGTERM during a run save the best image so far and exit 130 / 143.
"""

from __future__ import annotations

import os

# Before numpy loads OpenBLAS: scipy's L-BFGS-B does only vector work per iteration, where
# BLAS threads gain nothing and their spin-waiting takes the cores onnxruntime needs
# (docs/design.md). A user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import inspect  # noqa: E402
import json
import signal
import sys
import time
import typing
from pathlib import Path
from typing import Annotated

import typer

from ._version import __version__
from .config import NAME_TEMPLATE, from_options, options_of, video_options
from .errors import BadInput, Interrupted, NstError, os_error_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"max_content_width": 120},
                  help="Neural style transfer (Gatys et al.) on onnxruntime — no PyTorch.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress output.")]


def _parameter(f, o) -> inspect.Parameter:
    """A setting's :class:`~nst_onnx.config.Option` → the keyword parameter Typer reads.
    A field whose default is None ("not given": e.g. ``--history``, which the memory check
    may lower only when the user did not set it) stays None and only shows ``shown``; one
    whose default Typer cannot take (a tuple of layers) gets ``shown`` as its text."""
    default = f.default if o.shown is None or f.default is None else o.shown
    kind = o.cli if default is not None or o.cli is bool else o.cli | None
    text = o.help if default is not None or o.shown is None else \
        f"{o.help}  [default: {o.shown}]"
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, typer.Option(o.flag, help=text)])


def _with_options(name: str):
    """Give a command the options its settings declare in :mod:`nst_onnx.config` (``Option``
    with ``name`` among its commands), after its own; it receives them in ``**shared`` by
    field name, for :func:`~nst_onnx.config.from_options`."""
    def wrap(command):
        own = inspect.signature(command, eval_str=True)
        params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        extra = [_parameter(f, o) for f, o in options_of(name)]
        command.__signature__ = own.replace(parameters=params + extra)
        command.__annotations__ = {**typing.get_type_hints(command, include_extras=True),
                                   **{p.name: p.annotation for p in extra}}
        return command
    return wrap


def _err(msg: str) -> None:
    typer.echo(f"nst: error: {msg}", err=True)


def _log(quiet: bool):
    return (lambda m: None) if quiet else (lambda m: typer.echo(m, err=True))


@app.command()
@_with_options("export")
def export(rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild even if current.")]
           = False,
           force: Annotated[bool, typer.Option("--force", hidden=True)] = False,
           guided: Annotated[bool, typer.Option(help="Also the loss for --masks (otherwise "
                                                "built on first use).")] = False,
           quiet: QuietOpt = False, **shared) -> None:
    """Build the ONNX graphs (features; loss and gradient) and their manifest."""
    def go():
        from .api import export as export_models

        if force:  # its meaning before; --force means "ignore the memory estimate" now
            raise BadInput("nst export --force is now --rebuild")
        _, _, engine, spec = from_options(shared)
        for m in export_models(engine, spec, rebuild=rebuild, guided=guided, log=_log(quiet)):
            if not quiet:
                size = sum(f["bytes"] for f in m["files"].values()) / 1e6
                typer.echo(f"{m['dir']}: {', '.join(m['files'])} ({size:.1f} MB), weights "
                           f"{m['weights']['kind']}")
    _guard(go, shared["debug"])


@app.command()
@_with_options("info")
def info(as_json: JsonOpt = False, **shared):
    """Versions, providers and devices, exported models, cache directory, memory."""
    def go():
        from .diagnostics import system_info

        data = system_info(shared["models_dir"], shared["cache_dir"])
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        for k, v in data.items():
            if k == "models":
                continue
            if v is None:
                v = "none"
            elif isinstance(v, list):
                v = ", ".join(map(str, v))
            elif isinstance(v, dict):
                v = ", ".join(f"{a}: {b}" for a, b in v.items())
            typer.echo(f"{k.replace('_', ' '):22s}{v}")
        for m in data["models"]:
            line = m.get("error") or f"{m['key']} ({m['bytes'] / 1e6:.1f} MB, {m['weights']})"
            typer.echo(f"{'model':22s}{m['dir']}: {line}")
        if not data["models"]:
            typer.echo(f"{'model':22s}none exported yet: run `nst export`")
    _guard(go, shared["debug"])


@app.command()
@_with_options("bench")
def bench(sizes: Annotated[list[int] | None, typer.Option("--size", help="Square sizes to "
                                                          "time (repeatable).")] = None,
          repeats: Annotated[int, typer.Option(help="Timed evaluations per size.")] = 5,
          profile: Annotated[bool, typer.Option("--profile", help="Also where the time goes, "
                                                "per op type (convolutions vs the rest).")]
          = False,
          as_json: JsonOpt = False, **shared) -> None:
    """Time one loss+gradient evaluation (median after a warm-up) on this machine."""
    def go():
        from .api import StyleTransfer
        from .diagnostics import bench as run_bench

        _, _, engine, spec = from_options(shared)
        st = StyleTransfer(engine, spec, log=_log(as_json))
        out = run_bench(st, sizes or [256, 512], repeats, profile)
        if as_json:
            typer.echo(json.dumps(out))
            return
        typer.echo(f"{out['device']} ({', '.join(out['providers'])}), {out['threads']} threads, "
                   f"{out['model']}")
        for r in out["results"]:
            typer.echo(f"{r['size']:5d}²  {r['median_s']:.3f} s/evaluation  "
                       f"{r['gflops']:.0f} GFLOP/s")
            if "profile" in r:
                p = r["profile"]
                typer.echo(f"        kernels {p['total_ms']:.0f} ms: convolutions "
                           f"{p['conv_ms']:.0f} ms, everything else {p['other_ms']:.0f} ms "
                           f"({100 * p['other_share']:.0f}%)")
                for op, ms in list(p["by_op_ms"].items())[:12]:
                    typer.echo(f"        {op:24s}{ms:8.1f} ms")
        if out["peak_rss_mb"]:
            typer.echo(f"peak RSS {out['peak_rss_mb']:.0f} MB")
    _guard(go, shared["debug"])


@app.command()
@_with_options("stylize")
def stylize(
    content: Annotated[Path, typer.Argument(help="Content image (photo).", metavar="CONTENT")],
    styles: Annotated[list[Path], typer.Argument(help="One or more style images.",
                                                 metavar="STYLE...")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output image (.png, .jpg, "
                                         ".webp, .tif, .bmp).")] = Path("out.png"),
    masks: Annotated[str | None, typer.Option(
        "--masks", help="One mask image per style, drawn over the content (white: that "
        "style), e.g. sky.png,land.png.")] = None,
    save_every: Annotated[int, typer.Option(help="Save an intermediate image every N "
                                            "iterations (OUT.iterN.ext).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from that checkpoint "
                                         "(same settings and inputs), to the requested "
                                         "iterations.")] = False,
    no_clobber: Annotated[bool, typer.Option("--no-clobber", help="Refuse to overwrite an "
                                             "existing output.")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    **shared,
) -> None:
    """Repaint CONTENT in the manner of STYLE(S); write the result to -o."""
    def go():
        from .api import StyleTransfer
        from .io.checkpoint import checkpoint_path
        from .io.images import bit_depth, save_image, to_pil

        run, loss_weights, engine, spec = from_options(shared)
        run.validate()

        mask_paths = None if masks is None else [Path(m) for m in masks.split(",")]
        _check_paths(content, [*styles, *(mask_paths or [])], output, run.init, no_clobber)
        if save_every < 0:
            raise BadInput("--save-every must be ≥ 0")
        _check_space(output, content, run, bit_depth(output, run.bit_depth))
        log = _log(quiet or as_json)
        st = StyleTransfer(engine, spec, log=log)

        progress = _Progress(quiet or as_json)

        def before_run(problem, sizes, its):
            progress.plan = (sizes, its)
            plan = "" if len(sizes) == 1 else \
                f", coarse-to-fine {'→'.join(map(str, sizes))} px × {'/'.join(map(str, its))}"
            if problem.tiling:
                plan += ", {} tiles of {} px".format(*problem.tiling)
            log(f"{content.name} + {', '.join(s.name for s in styles)} → {output} "
                f"({sizes[-1]} px, {sum(its)} iterations{plan}, {run.optimizer}, "
                f"{st.device}, {st.threads} threads)")

        def callback(p):
            progress(p)
            if save_every and p.iteration % save_every == 0 and p.iteration < p.iterations:
                step = output.with_name(f"{output.stem}.iter{p.iteration}{output.suffix}")
                try:
                    save_image(to_pil(p.x[None]), step)
                except OSError as e:  # a full disk must not end the run
                    log(f"warning: could not write {step} ({e.strerror or e}); the run goes on")

        ckpt = checkpoint_path(output) if run.checkpoint_every or resume else None
        with _signals_stop_the_run() as signals:
            result = st.transfer(content, styles, run, loss_weights, masks=mask_paths,
                                 callback=callback, before_run=before_run, checkpoint=ckpt,
                                 resume="require" if resume else "never", keep_checkpoint=True)
            signals.ignore()
            progress.close()
            w, h = result.image.size
            summary = {"output": str(output), "content": str(content),
                       "styles": [str(s) for s in styles],
                       **({"masks": [str(m) for m in mask_paths]} if mask_paths else {}),
                       "width": w, "height": h, **result.summary()}
            try:
                save_image(result.image, output, {"nst-onnx": json.dumps(
                    {"version": __version__, **summary}, default=str)},
                    pixels=result.pixels, depth=run.bit_depth, dpi=run.dpi)
            except OSError as e:
                raise _unsaved(output, result.image, ckpt, e) from None
            finished = result.optimize.interrupted is None and result.optimize.error is None
            if ckpt is not None and finished:  # only now: the output is safely in place
                ckpt.unlink(missing_ok=True)
        if as_json:
            typer.echo(json.dumps(summary, default=float))
        elif not quiet:
            s = summary
            typer.echo(f"wrote {output}: loss {s['initial_loss']:.4g} → {s['final_loss']:.4g} "
                       f"in {s['iterations']} iterations ({s['evaluations']} evaluations, "
                       f"{s['seconds']:.1f} s); {s['stop_reason']}", err=True)
        if result.optimize.error is not None:  # e.g. GPU memory: the best image is written
            raise result.optimize.error
        if result.optimize.interrupted is not None:
            raise typer.Exit(result.optimize.interrupted.exit_code)
    _guard(go, shared["debug"])


@app.command()
@_with_options("batch")
def batch(
    contents: Annotated[list[str] | None, typer.Argument(
        help="Content images: files, folders or globs.", metavar="CONTENT...")] = None,
    styles: Annotated[list[str] | None, typer.Option(
        "--styles", help="Style images: files, folders or globs (repeat the option, or "
        "separate with commas).")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")] = Path("."),
    jobs_file: Annotated[Path | None, typer.Option(
        "--jobs-file", help="CSV or JSON lines: content, style (or styles, ';'-separated), "
        "optional output and per-job settings (size, seed, style_weight, …).")] = None,
    name: Annotated[str, typer.Option("--name", help="Output names: {content}, {style}, "
                                      "{index}.")] = NAME_TEMPLATE,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Local worker processes (default: from the cores and the memory "
        "estimate).")] = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Run the jobs as Ray tasks: auto, local, or a cluster address "
        "(host:port).")] = None,
    redo: Annotated[bool, typer.Option("--redo", help="Redo jobs that are already done.")]
    = False,
    videos: Annotated[list[str] | None, typer.Option(
        "--videos", help="Video files, globs of them, or folders of frames (each one clip): "
        "each clip × --styles is one job (the video options apply).")] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    **shared,
) -> None:
    """Stylise many pictures: every CONTENT × --styles pair (or --jobs-file), outputs in -o
    with a manifest.jsonl and a contact sheet; re-runs skip finished jobs and resume stopped
    ones. --videos: every clip as one job. Exit 0 when every job succeeded, 2 when any
    failed."""
    def go():
        from .batch import batch as run_batch

        if workers is not None and workers < 1:
            raise BadInput("--workers must be ≥ 1")
        style_list = [v for item in styles or [] for v in item.split(",") if v.strip()]
        if videos:
            return _batch_videos(videos, contents, jobs_file, style_list, output, workers, ray,
                                 quiet, as_json, shared)
        if not jobs_file and not (contents and styles):
            raise BadInput("give CONTENT... and --styles, or --jobs-file")
        run, loss_weights, engine, spec = from_options(shared)
        run.validate()
        with _BatchProgress(quiet or as_json) as progress:
            result = run_batch(contents or [], style_list, output, run=run,
                               weights=loss_weights, engine=engine, spec=spec,
                               jobs_file=jobs_file, template=name, workers=workers, ray=ray,
                               redo=redo, log=_log(quiet or as_json), progress=progress)
        _batch_end(result, quiet, as_json, {"contact_sheet": str(result.contact_sheet),
                                            "jobs": result.records})
    _guard(go, shared["debug"])


def _batch_end(result, quiet: bool, as_json: bool, listing: dict) -> None:
    """What a batch (of pictures or clips) says at its end, and its exit code."""
    if as_json:
        typer.echo(json.dumps({"counts": result.counts, "seconds": result.seconds,
                               "manifest": str(result.outdir / "manifest.jsonl"), **listing},
                              default=str))
    elif not quiet:
        typer.echo(result.summary_line(), err=True)
    if result.interrupted is not None:
        raise typer.Exit(result.interrupted.exit_code)
    if not result.ok:
        raise typer.Exit(2)


def _batch_videos(videos, contents, jobs_file, styles, output, workers, ray, quiet, as_json,
                  shared) -> None:
    from .video.batch import batch_videos

    if contents or jobs_file:
        raise BadInput("--videos makes a batch of clips: give no CONTENT or --jobs-file with it")
    if not styles:
        raise BadInput("give --styles for the clips")
    run, loss_weights, engine, spec = from_options(shared)
    with _BatchProgress(quiet or as_json) as progress:
        result = batch_videos([v for item in videos for v in item.split(",") if v.strip()],
                              styles, output, run=run, weights=loss_weights,
                              video=video_options(shared), engine=engine, spec=spec,
                              workers=workers, ray=ray, log=_log(quiet or as_json),
                              progress=progress)
    _batch_end(result, quiet, as_json, {"videos": result.records})


@app.command()
@_with_options("video")
def video(
    source: Annotated[str, typer.Argument(help="A video file (mp4, mov, webm, avi, mkv, …), "
                                          "a folder of frames or a glob (frames/*.png).",
                                          metavar="INPUT")],
    styles: Annotated[list[Path], typer.Argument(help="One or more style images.",
                                                 metavar="STYLE...")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Output video (.mp4, .mov, .avi, .webm, .mkv); no audio.")]
    = None,
    frames_dir: Annotated[Path | None, typer.Option(
        "--frames-dir", help="Folder for the stylised frames (frame_000001.png …) and their "
        "manifest (default: OUTPUT's name + _frames, beside it).")] = None,
    masks: Annotated[str | None, typer.Option(
        "--masks", help="One mask image per style, drawn over the frames (the same for "
        "every frame).")] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    **shared,
) -> None:
    """Stylise a clip with temporal consistency (Ruder et al.): each frame starts from the
    previous result carried along the optical flow and is held to it where the flow is
    reliable. Finished frames are kept; a re-run continues at the first missing one."""
    def go():
        from .api import StyleTransfer
        from .video import stylize_video

        run, loss_weights, engine, spec = from_options(shared)
        opts = video_options(shared)
        opts.validate()
        run.validate()
        for p in styles:
            if not p.exists():
                raise BadInput(f"input not found: {p}")
        mask_paths = None if masks is None else [Path(m) for m in masks.split(",")]
        log = _log(quiet or as_json)
        st = StyleTransfer(engine, spec, log=log)
        progress = _Progress(quiet or as_json)

        def on_frame(event):
            progress.close()
            progress.first = None
            r, eta = event["record"], event["eta"]
            what = "kept (done before)" if r["status"] == "skipped" else \
                (f"{r['iterations']} iterations, loss {r['final_loss']:.4g}, "
                 f"{r['seconds']:.1f} s" + ("" if r["temporal"] else ", no temporal term"))
            left = "" if eta is None else f", ETA {_clock(eta)}"
            log(f"frame {event['index']}/{event['total']}: {what}{left}")

        with _signals_stop_the_run():
            result = stylize_video(st.engine, source, styles, run, loss_weights, opts,
                                   output=output, frames_dir=frames_dir, masks=mask_paths,
                                   on_frame=on_frame, callback=progress)
        summary = result.summary()
        if as_json:
            typer.echo(json.dumps(summary, default=float))
        elif not quiet:
            where = f"{output} and " if output and summary["complete"] else ""
            typer.echo(f"wrote {where}{summary['written']} frames in {result.frames_dir} "
                       f"({summary['stylised']} stylised, {summary['skipped']} kept; "
                       f"{summary['seconds']:.1f} s)", err=True)
        if result.interrupted is not None:
            _err(f"stopped at frame {len(result.records) + 1}: run the same command again "
                 "to continue (its checkpoint resumes it)")
            raise typer.Exit(result.interrupted.exit_code)
        if result.stopped:
            _err(result.stopped)
            raise typer.Exit(2)
    _guard(go, shared["debug"])


@app.command()
@_with_options("serve")
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; any but loopback "
                                      "requires a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port.")] = 8000,
    out: Annotated[Path, typer.Option("--out", help="Folder for the job database, uploads "
                                      "and results.")] = Path("nst-serve"),
    token: Annotated[str | None, typer.Option("--token", help="Required on every request "
                                              "(default: one is made off loopback).")] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest request, "
                                                 "in MB.")] = 50.0,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a "
                                               "browser.")] = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Jobs running at once (default: one per two physical cores, "
        "one on a GPU).")] = None,
    **shared,
) -> None:
    """A local web page: pick a photo and styles, watch the picture form, keep a gallery.
    Jobs queue in OUT/jobs.sqlite and resume after a restart."""
    def go():
        from .serve import ServeOptions
        from .serve import serve as run_server

        _, _, engine, spec = from_options(shared)
        run_server(ServeOptions(out, host, port, token, max_upload_mb, engine, spec,
                                workers=workers), open_browser, log=_log(False))
    _guard(go, shared["debug"])


class _BatchProgress:
    """One live display on stderr: jobs done/total with ETA, and the job at hand's iteration
    and loss; failures are printed as they happen."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __enter__(self):
        if self.quiet:
            return lambda event: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=False)
        self.progress.start()
        self.task = None
        return self

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self.task = self.progress.add_task("jobs", total=event["total"])
        elif kind == "iteration" and self.task is not None:
            self.progress.update(self.task, description=f"job {event['index'] + 1}: "
                                 f"{event['iteration']}/{event['iterations']} loss "
                                 f"{event['loss']:.4g}")
        elif kind == "job" and self.task is not None:
            rec = event["record"]
            self.progress.advance(self.task)
            if rec["status"] == "failed":
                self.progress.console.print(f"job {rec['job'] + 1} failed: {rec['reason']}")

    def __exit__(self, *exc):
        if not self.quiet:
            self.progress.stop()


class _signals_stop_the_run:
    """SIGINT / SIGTERM raise :class:`Interrupted` inside the run (the optimisers return the
    best image so far); once the run returns, further signals are ignored while the result
    is written, so it lands whole."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}

        def stop(signum, frame):
            self.ignore()
            raise Interrupted(130 if signum == signal.SIGINT else 143)
        for sig in self.SIGNALS:
            signal.signal(sig, stop)
        return self

    def ignore(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _check_paths(content: Path, styles: list[Path], output: Path, init: str,
                 no_clobber: bool) -> None:
    """Refuse before any long work: missing inputs, output = an input (the init image
    included), unwritable output."""
    inputs = [content, *styles] + ([Path(init)] if init not in ("content", "noise", "style")
                                   else [])
    from .io.atomic import name_max, regular_file
    from .io.checkpoint import longest_derived_name

    for p in inputs:
        if not p.exists():
            raise BadInput(f"input not found: {p}")
        regular_file(p, "input")
    out = output.resolve()
    if any(out == p.resolve() for p in inputs):
        raise BadInput(f"output {output} is one of the inputs: choose another path")
    parent = out.parent
    if not parent.is_dir():
        raise BadInput(f"output directory {parent} does not exist: create it first")
    limit = name_max(parent)
    if longest_derived_name(out.name) > limit:
        raise BadInput(f"output name {out.name[:40]}… is too long for this file system "
                       f"({len(out.name.encode())} bytes; at most "
                       f"{limit - longest_derived_name('')} here, leaving room for its "
                       "temporary and checkpoint names)")
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


def _check_space(output: Path, content: Path, run, depth: int) -> None:
    """Refuse before the run when the output's folder has no room for it (uncompressed,
    the most it can take), from the content's header alone."""
    import shutil

    from PIL import Image

    from .config import DEFAULT_SIZE, NATIVE
    from .io.images import fitted_size

    try:
        with Image.open(content) as img:
            size = img.size
        side = max(size) if run.size == NATIVE else run.size or DEFAULT_SIZE
        w, h = fitted_size(size, side)
        free = shutil.disk_usage(output.resolve().parent).free
    except (OSError, ValueError, Image.DecompressionBombError):
        return  # an unreadable content is refused, with its reason, where it is decoded
    need = w * h * 3 * depth // 8
    if need > free:
        raise BadInput(f"the output needs up to {need / 1e6:.0f} MB and {output.parent} has "
                       f"{free / 1e6:.0f} MB free: free some space or choose another -o")


def _unsaved(output: Path, image, ckpt: Path | None, e: OSError) -> NstError:
    """The one line for a final save that failed (a full disk): what it needs and where the
    finished run is kept — its checkpoint, from which ``--resume`` only writes the output."""
    w, h = image.size
    why = f"could not write {output} ({e.strerror or e}; up to {w * h * 3 / 1e6:.1f} MB needed)"
    if ckpt is not None and ckpt.exists():
        return NstError(f"{why}: the finished run is kept in {ckpt}; free some space and run "
                        "the same command with --resume to write it")
    import tempfile

    from .io.images import save_image

    spare = Path(tempfile.gettempdir()) / f"nst-onnx-{os.getpid()}-{output.name}"
    try:  # no checkpoint (--checkpoint-every 0): the temporary folder may be another disk
        save_image(image, spare)
    except OSError:
        return NstError(f"{why}: nothing was kept (no checkpoint; {spare.parent} is full too)")
    return NstError(f"{why}: the image was written to {spare} instead")


def _clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on (a print-size run's ETA)."""
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


TIME_EXPONENT = 1.1  # an iteration's time grows as pixels ** this: a larger image costs
#                     more per pixel (caches), and tiles add their halos and statistics pass
#                     at the sizes that need them (README, "Print sizes": the fit behind it)


class _Progress:
    """One status line on stderr: iteration, loss and its terms, s/iteration, ETA; with
    coarse-to-fine or tiles, the scale at hand (and its tiles).

    The rate is the scale at hand's, timed from its first report on, so neither the warm-up
    nor a scale's preparation inflates it. The ETA counts each later scale of ``plan`` at
    that rate times its pixels over this scale's to the power :data:`TIME_EXPONENT` (counted
    by pixels alone, a 4096 px run's ETA was half an hour short)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.first: tuple[int, float, int] | None = None  # (iteration, clock, scale) at the
        #                                                   scale's first report
        self.plan: tuple[list[int], list[int]] | None = None  # (sizes, iterations) per scale
        self.rate: tuple[float, int] | None = None  # (s/it, scale) as last measured
        self.shown = False

    def seconds_per_iteration(self, p, now: float) -> float:
        if self.first is None or self.first[2] != p.scale:
            self.first = (p.iteration, now, p.scale)
        it0, t0, _ = self.first
        if p.iteration > it0:
            self.rate = ((now - t0) / (p.iteration - it0), p.scale)
        elif self.rate and self.rate[1] and p.scale:  # a new scale: the last one's, grown
            return self.rate[0] * (p.scale / self.rate[1]) ** (2 * TIME_EXPONENT)
        else:  # the optimiser's own clock, over the iterations it ran at this scale
            k = self._index(p)
            before = sum(self.plan[1][:k]) if k is not None else 0
            return p.seconds / max(p.iteration - before, 1)
        return self.rate[0]

    def _index(self, p) -> int | None:
        """Where the scale at hand is in ``plan`` (None: no plan, or not in it)."""
        sizes = self.plan[0] if self.plan else []
        return sizes.index(p.scale) if p.scale in sizes else None

    def eta(self, p, spi: float) -> float:
        k = self._index(p)
        if k is None:
            return spi * (p.iterations - p.iteration)
        sizes, its = self.plan
        later = sum(n * (s / p.scale) ** (2 * TIME_EXPONENT)
                    for s, n in zip(sizes[k + 1:], its[k + 1:]))
        return spi * (sum(its[:k + 1]) - p.iteration + later)

    def __call__(self, p) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        spi = self.seconds_per_iteration(p, now)
        final = p.iteration == p.iterations
        if not final and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        eta = self.eta(p, spi)
        t = p.groups
        bar_w = 20
        filled = int(bar_w * p.iteration / max(p.iterations, 1))
        where = ""  # the scale, where there are several or it is tiled
        if p.tiles or (self.plan and len(self.plan[0]) > 1 and p.scale):
            where = f" at {p.scale} px" + (" ({} tiles of {} px)".format(*p.tiles)
                                           if p.tiles else "")
        line = (f"[{'#' * filled}{'.' * (bar_w - filled)}] {p.iteration}/{p.iterations}{where} "
                f"loss {p.loss:.4g} (content {t['content']:.3g}, style {t['style']:.3g}, "
                f"tv {t['tv']:.3g}" + (f", temporal {t['temporal']:.3g}" if "temporal" in t
                                       else "")
                + f") {spi:.2f} s/it ETA {_clock(eta)}")
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\n")
            self.shown = False


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
    except OSError as e:  # the environment (a full disk, a permission): name the file
        if debug:
            raise
        _err(os_error_line(e))
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
