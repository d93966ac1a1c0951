"""Many pictures: every content × style pair of files, folders or globs (or the pairs of a
jobs file), each a job; outputs named by a template, one manifest line per job, a contact
sheet at the end.

The driver (the calling process) plans the jobs, skips those already done — an output
whose fingerprint (settings, decoded inputs, model) matches the manifest or the PNG's own
metadata — runs the rest in this process, in local worker processes (``workers``), or as
Ray tasks (``ray``), and owns every write: outputs (atomic), the manifest (one line appended
per finished job), the contact sheet. A job fails alone, with its one-line reason. Jobs
checkpoint beside their output (``--checkpoint-every``), so a batch stopped by anything,
``kill -9`` included, continues on the next run without redoing finished work.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import (
    NAME_TEMPLATE,
    EngineOptions,
    LossSpec,
    LossWeights,
    RunOptions,
    parse_cell,
    settings_dict,
    split_settings,
)
from .errors import BadInput, Interrupted, NstError
from .io.atomic import sha256_file, write_bytes
from .io.checkpoint import checkpoint_path
from .io.images import FORMATS, EncodedImage, encode_image

MANIFEST = "manifest.jsonl"
SHEET = "contact_sheet.jpg"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


@dataclass
class Job:
    index: int
    content: Path
    styles: list[Path]
    output: Path
    run: RunOptions
    weights: LossWeights
    masks: list[Path] | None = None
    row: int = 0  # position on the contact sheet
    col: int = 0


@dataclass
class BatchResult:
    """What a batch did: one manifest record per job (in job order), and where things are."""

    records: list[dict]
    outdir: Path
    seconds: float
    skipped_inputs: int = 0  # non-image files found in input folders
    contact_sheet: Path | None = None
    interrupted: Interrupted | None = field(default=None, repr=False)

    @property
    def counts(self) -> dict[str, int]:
        out = {"done": 0, "skipped": 0, "failed": 0}
        for r in self.records:
            out[r["status"]] += 1
        return out

    @property
    def ok(self) -> bool:
        return self.counts["failed"] == 0 and self.interrupted is None

    def summary_line(self) -> str:
        c = self.counts
        extra = f", {self.skipped_inputs} non-image files ignored" if self.skipped_inputs else ""
        stopped = "; interrupted (run again to continue)" if self.interrupted else ""
        return (f"batch: {len(self.records)} jobs — {c['done']} done, {c['skipped']} skipped, "
                f"{c['failed']} failed{extra} in {self.seconds:.1f} s; manifest "
                f"{self.outdir / MANIFEST}" + (f", contact sheet {self.contact_sheet}"
                                              if self.contact_sheet else "") + stopped)


# --------------------------------------------------------------------------- planning


def expand(items: list[str | os.PathLike], what: str,
           log: Callable[[str], None]) -> tuple[list[Path], int]:
    """Files, folders (their images, sorted; other files skipped with a notice) and globs →
    image paths, and how many non-image files were skipped."""
    paths, skipped = [], 0
    for item in items:
        item = str(item)
        if Path(item).is_dir():
            found = sorted(p for p in Path(item).iterdir() if p.is_file())
            images = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
            for p in found:
                if p not in images and not p.name.startswith("."):
                    skipped += 1
                    log(f"note: skipping {p} (not an image file)")
            if not images:
                raise BadInput(f"{what} folder {item} has no image files")
            paths += images
        elif Path(item).is_file():
            paths.append(Path(item))
        else:
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not matches:
                raise BadInput(f"{what} {item} not found (no file, folder or glob match)")
            paths += matches
    return list(dict.fromkeys(paths)), skipped


def _name(template: str, content: Path, styles: list[Path], index: int) -> str:
    try:
        name = template.format(content=content.stem, style="+".join(s.stem for s in styles),
                               index=index)
    except (KeyError, IndexError, ValueError) as e:
        raise BadInput(f"--name template {template!r}: {e}; use {{content}}, {{style}}, "
                       "{index}") from None
    if Path(name).suffix.lower() not in FORMATS:
        name += ".png"
    return name


def _disambiguate(jobs: list[Job]) -> None:
    """Two jobs never write one file: later ones get -2, -3, … before the extension."""
    seen: set[Path] = set()
    for job in jobs:
        out, k = job.output, 2
        while out in seen:
            out = job.output.with_name(f"{job.output.stem}-{k}{job.output.suffix}")
            k += 1
        seen.add(out)
        job.output = out


def read_jobs_file(path: Path) -> list[dict]:
    """CSV (a header row; columns content, style or styles, optionally output, masks and any
    setting) or JSON lines (the same keys). Paths are relative to the file's folder."""
    if not path.is_file():
        raise BadInput(f"jobs file not found: {path}")
    try:  # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(f"jobs file {path} is not UTF-8 text (byte {e.start}): save it as "
                       "UTF-8") from None
    rows: list[dict] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise BadInput(f"jobs file {path} line {n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise BadInput(f"jobs file {path} line {n}: expected an object")
            rows.append(row | {"_row": f"line {n}"})
    else:
        reader = csv.DictReader(io.StringIO(text))
        for n, row in enumerate(reader, start=2):
            rows.append({k.strip(): v for k, v in row.items() if k} | {"_row": f"row {n}"})
    if not rows:
        raise BadInput(f"jobs file {path} lists no jobs")
    return rows


def plan(contents: list, styles: list, outdir: Path, template: str, run: RunOptions,
         weights: LossWeights, jobs_file: Path | None = None,
         log: Callable[[str], None] = print) -> tuple[list[Job], int]:
    """The jobs (every content × style, or the jobs file's rows) and the count of non-image
    files skipped in folders."""
    jobs: list[Job] = []
    skipped = 0
    if jobs_file is None:
        cs, sk1 = expand(contents, "content", log)
        ss, sk2 = expand(styles, "style", log)
        skipped = sk1 + sk2
        for r, c in enumerate(cs):
            for k, s in enumerate(ss):
                i = len(jobs)
                jobs.append(Job(i, c, [s], outdir / _name(template, c, [s], i), run, weights,
                                row=r, col=k))
    else:
        base = jobs_file.parent
        rows = read_jobs_file(jobs_file)
        content_index: dict[Path, int] = {}
        style_index: dict[tuple, int] = {}
        for row in rows:
            where = f"jobs file {jobs_file} {row.pop('_row')}"
            try:
                content = _resolve(base, row.pop("content", None), "content")
                style_cell = row.pop("styles", None) or row.pop("style", None)
                style_list = style_cell if isinstance(style_cell, list) else \
                    [v for v in str(style_cell or "").split(";") if v.strip()]
                job_styles = [_resolve(base, s, "style") for s in style_list]
                if not job_styles:
                    raise BadInput("no style")
                masks = row.pop("masks", None)
                mask_list = masks if isinstance(masks, list) else \
                    [m for m in str(masks or "").split(";") if m.strip()]
                output = row.pop("output", None)
                overrides = {}
                for key, value in row.items():
                    value = parse_cell(key, value)
                    if value is not None:
                        overrides[key] = value
                job_run, job_weights = split_settings(run, weights, **overrides)
                job_run.validate()
                job_weights.validate(len(job_styles), 1 << 30)
            except (BadInput, ValueError, TypeError) as e:
                raise BadInput(f"{where}: {e}") from None
            i = len(jobs)
            jobs.append(Job(i, content, job_styles,
                            outdir / (output or _name(template, content, job_styles, i)),
                            job_run, job_weights,
                            [_resolve(base, m, "mask") for m in mask_list] or None,
                            row=content_index.setdefault(content, len(content_index)),
                            col=style_index.setdefault(tuple(job_styles), len(style_index))))
    _disambiguate(jobs)
    return jobs, skipped


def _resolve(base: Path, value, what: str) -> Path:
    if not value:
        raise BadInput(f"no {what} given")
    p = Path(str(value)).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise BadInput(f"{what} {p} not found")
    return p


# --------------------------------------------------------------------------- manifest


def read_manifest(outdir: Path) -> dict[str, dict]:
    """The last record per output file; a torn last line (a crash mid-append) is ignored."""
    out: dict[str, dict] = {}
    try:
        lines = (outdir / MANIFEST).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
            out[rec["output"]] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return out


def append_record(outdir: Path, record: dict) -> None:
    """One line, one ``write`` on an O_APPEND descriptor, then fsync: a crash leaves whole
    lines and at most one torn last line, which readers skip."""
    data = (json.dumps(record, default=str, ensure_ascii=False) + "\n").encode()
    fd = os.open(outdir / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _already_done(job: Job, fp: str, records: dict[str, dict]) -> bool:
    """The output exists and was made by these settings, inputs and model (manifest, or the
    PNG's own metadata when the manifest is gone)."""
    out = job.output
    if not out.is_file():
        return False
    rec = records.get(str(out))
    if rec and rec.get("fingerprint") == fp and rec.get("status") in ("done", "skipped"):
        return rec.get("output_sha256") in (None, sha256_file(out))
    try:
        from PIL import Image

        with Image.open(out) as img:
            meta = json.loads(img.info.get("nst-onnx", "{}"))
        return meta.get("fingerprint") == fp
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- running


_ENGINES: dict = {}  # per worker process: the StyleTransfer of each (engine, spec)
_PROGRESS = None  # a worker process's queue to the driver


def _engine(engine: dict, spec: dict, models: dict | str | None):
    from .api import StyleTransfer

    key = json.dumps([engine, spec, models if isinstance(models, str) else None], default=str,
                     sort_keys=True)
    if key not in _ENGINES:
        options = dict(engine)
        if isinstance(models, dict):  # files that travelled: write them once per process
            import tempfile

            d = Path(tempfile.gettempdir()) / f"nst-onnx-models-{models['sha']}" / models["key"]
            if not (d / "manifest.json").exists():
                d.mkdir(parents=True, exist_ok=True)
                for name, data in models["files"].items():
                    (d / name).write_bytes(data)
            options["models_dir"] = str(d.parent)
        elif models:
            options["models_dir"] = models
        spec = {k: v for k, v in spec.items() if k != "guided"}  # masks pick the guided twin
        _ENGINES[key] = StyleTransfer(**options, **spec, log=lambda m: None)
    return _ENGINES[key]


def execute(payload: dict) -> dict:
    """Run one job (in whichever process it lands): the output as PNG bytes and the summary.
    Inputs are paths, or :class:`EncodedImage` bytes that travelled (Ray)."""
    from .io.checkpoint import checkpoint_path

    st = _engine(payload["engine"], payload["spec"], payload["models"])
    run = RunOptions(**payload["run"])
    weights = LossWeights(**payload["weights"])
    output = Path(payload["output"])
    ckpt = checkpoint_path(output) if run.checkpoint_every and \
        os.access(output.parent, os.W_OK) else None
    index = payload["index"]

    def progress(p) -> None:
        if _PROGRESS is not None:
            _PROGRESS.put({"index": index, "iteration": p.iteration,
                           "iterations": p.iterations, "loss": p.loss})
    result = st.transfer(payload["content"], payload["styles"], run, weights,
                         masks=payload["masks"], callback=progress, checkpoint=ckpt,
                         resume="auto", keep_checkpoint=True)
    if result.optimize.interrupted is not None:
        raise result.optimize.interrupted
    if result.optimize.error is not None:
        raise result.optimize.error
    summary = {k: v for k, v in result.summary().items() if k not in ("scales",)}
    summary["fingerprint"] = payload["fingerprint"]
    from ._version import __version__

    data = encode_image(result.image, output, {"nst-onnx": json.dumps(
        {"version": __version__, **summary, "output": str(output)}, default=str)})
    return {"data": data, "summary": summary}


def _init_worker(queue) -> None:
    import signal

    global _PROGRESS
    _PROGRESS = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides; checkpoints keep work


def _one_line(e: BaseException) -> str:
    if isinstance(e, NstError):
        return str(e)
    cause = getattr(e, "cause", None)  # a Ray task's own exception
    if isinstance(cause, BaseException):
        return _one_line(cause)
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[-1] if text else ''}"[:300]


def _ray(address: str):
    """Ray, started or joined: ``auto`` (a running cluster on this machine, else a new local
    one), ``local`` (a new local one) or ``host:port`` / ``ray://host:port``."""
    try:
        import ray
    except ImportError:
        raise BadInput("--ray needs Ray: pip install 'nst-onnx[ray]'") from None
    if ray.is_initialized():
        return ray
    if address not in ("auto", "local"):
        hostport = address.split("://")[-1]
        host, _, port = hostport.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
        except (OSError, ValueError):
            raise BadInput(f"cannot reach Ray at {address}: is `ray start --head` running "
                           "there, and the port open?") from None
    try:
        if address == "local":
            ray.init(log_to_driver=False, include_dashboard=False)
        elif address == "auto":
            try:
                ray.init(address="auto", log_to_driver=False)
            except ConnectionError:
                ray.init(log_to_driver=False, include_dashboard=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except Exception as e:
        raise BadInput(f"cannot start or join Ray at {address}: {_one_line(e)}") from None
    return ray


def batch(contents: list | None = None, styles: list | None = None, outdir: str | os.PathLike =
          "out", *, run: RunOptions | None = None, weights: LossWeights | None = None,
          engine: EngineOptions | None = None, spec: LossSpec | None = None,
          jobs_file: str | os.PathLike | None = None, template: str = NAME_TEMPLATE,
          workers: int | None = None, ray: str | None = None, redo: bool = False,
          log: Callable[[str], None] = print,
          progress: Callable[[dict], None] | None = None, **overrides) -> BatchResult:
    """Run a batch (module docstring); ``progress`` gets events: ``{"event": "start",
    "total"}``, ``{"event": "iteration", "index", "iteration", "iterations", "loss"}`` and
    ``{"event": "job", "record"}``. ``redo``: run jobs already done too (``run.force`` is
    the memory estimate's override, as everywhere). Returns every job's manifest record."""
    from .graphs.export import read_manifest as read_model_manifest
    from .run.engine import model_for

    start = time.perf_counter()
    run, weights = split_settings(run, weights, **overrides)
    run.validate()
    engine = engine or EngineOptions()
    engine.validate()
    spec = spec or LossSpec()
    outdir = Path(outdir)
    _check_outdir(outdir)
    ray_mod = _ray(ray) if ray else None  # a missing or unreachable Ray fails before any work
    jobs, skipped_inputs = plan(contents or [], styles or [], outdir, template, run, weights,
                                Path(jobs_file) if jobs_file else None, log)
    model_dir = model_for(engine, spec, log)
    model = read_model_manifest(model_dir)
    model_sha = model["files"]["loss.onnx"]["sha256"]
    emit = progress or (lambda e: None)
    emit({"event": "start", "total": len(jobs)})
    records: dict[int, dict] = {}

    def record(rec: dict) -> None:
        records[rec["job"]] = rec
        append_record(outdir, rec)
        emit({"event": "job", "record": rec})
    pending = _to_run(jobs, read_manifest(outdir), spec, model, model_sha, redo, record)
    interrupted = None
    if pending:
        payload_base = {"engine": dataclasses.asdict(engine), "spec": dataclasses.asdict(spec)}
        try:
            if ray_mod is not None:
                runner = _run_ray(ray_mod, pending, payload_base, model_dir, model, engine)
            elif (n := workers or default_workers(engine, run, len(pending))) > 1:
                runner = _run_pool(n, pending, payload_base, str(model_dir.parent), engine, emit)
            else:
                runner = _run_here(pending, payload_base, str(model_dir.parent), emit)
            for job, fp, outcome in runner:
                record(_finish(job, fp, outcome, _base_record(job, model, model_sha)))
        except (Interrupted, KeyboardInterrupt) as e:
            interrupted = e if isinstance(e, Interrupted) else Interrupted(130)
    ordered = [records[j.index] for j in jobs if j.index in records]
    sheet = _sheet(jobs, records, outdir)
    return BatchResult(ordered, outdir, time.perf_counter() - start, skipped_inputs, sheet,
                       interrupted)


def _to_run(jobs: list[Job], previous: dict, spec: LossSpec, model: dict, model_sha: str,
            redo: bool, record: Callable[[dict], None]) -> list[tuple[Job, str]]:
    """The jobs to run, each with its fingerprint; those already done (unless ``redo``) and
    those whose inputs cannot be read are recorded as skipped or failed instead."""
    from .job import Inputs, fingerprint_images

    pending = []
    for job in jobs:
        base = _base_record(job, model, model_sha)
        try:
            inputs = Inputs.load(job.content, job.styles, job.masks, job.run.init,
                                 job.run.max_image_pixels, lambda m: None)
            fp = fingerprint_images(inputs.images, job.run, job.weights, spec, model_sha)
        except NstError as e:
            record(base | {"status": "failed", "reason": str(e)})
            continue
        if not redo and _already_done(job, fp, previous):
            record(base | {"status": "skipped", "fingerprint": fp,
                           "reason": "already done with the same settings, inputs and model",
                           "output_sha256": sha256_file(job.output)})
        else:
            pending.append((job, fp))
    return pending


def default_workers(engine: EngineOptions, run: RunOptions, jobs: int) -> int:
    """One worker per two physical cores (each with two threads), as many as the memory
    estimate allows; one on a GPU (the device is shared: each worker would hold its own CUDA
    context and arena), also when ``auto`` finds one, or for a single job."""
    from .run import resources
    from .run.devices import resolve_device
    from .run.sessions import physical_cores

    gpu = engine.device == "cuda" or (engine.device == "auto" and
                                      resolve_device("auto")[0] == "cuda")
    if gpu or jobs < 2 or engine.threads:
        return 1 if not engine.threads else max(1, min(jobs, physical_cores() // engine.threads))
    by_cores = max(1, physical_cores() // 2)
    avail = resources.available_mb()
    mpx = run.output_size ** 2 * 0.75 / 1e6
    per_job = resources.estimate_peak_mb(mpx, run.history, optimizer=run.optimizer)
    by_memory = max(1, int(resources.HEADROOM * avail // per_job)) if avail else by_cores
    return max(1, min(by_cores, by_memory, jobs))


def _check_outdir(outdir: Path) -> None:
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.NamedTemporaryFile(dir=outdir, prefix=".nst-probe-"):
            pass
    except OSError as e:
        raise BadInput(f"cannot write into {outdir} ({e.strerror}): choose another -o folder") \
            from None


def _base_record(job: Job, model: dict, model_sha: str) -> dict:
    def file_hash(p: Path) -> str | None:
        try:
            return sha256_file(p)
        except OSError:
            return None
    return {"job": job.index, "output": str(job.output), "content": str(job.content),
            "content_sha256": file_hash(job.content), "styles": [str(s) for s in job.styles],
            "styles_sha256": [file_hash(s) for s in job.styles],
            **({"masks": [str(m) for m in job.masks]} if job.masks else {}),
            "settings": settings_dict(job.run, job.weights, LossSpec(
                tuple(model["content_layers"]), tuple(model["style_layers"]), model["pooling"])),
            "model": model["key"], "model_sha256": model_sha}


def _payload(job: Job, fp: str, base: dict, travel: bool = False) -> dict:
    def src(p: Path):
        return EncodedImage.read(p) if travel else str(p)
    return base | {"index": job.index, "output": str(job.output), "fingerprint": fp,
                   "content": src(job.content), "styles": [src(s) for s in job.styles],
                   "masks": [src(m) for m in job.masks] if job.masks else None,
                   "run": dataclasses.asdict(job.run), "weights": dataclasses.asdict(job.weights)}


def _finish(job: Job, fp: str, outcome, base: dict) -> dict:
    """Write a finished job's output (atomically) and make its manifest record."""
    if isinstance(outcome, BaseException):
        return base | {"status": "failed", "fingerprint": fp, "reason": _one_line(outcome)}
    write_bytes(job.output, outcome["data"])
    checkpoint_path(job.output).unlink(missing_ok=True)  # only now: the output is in place
    s = outcome["summary"]
    return base | {"status": "done", "fingerprint": fp, "output_sha256":
                   hashlib.sha256(outcome["data"]).hexdigest(),
                   "initial_loss": s["initial_loss"], "final_loss": s["final_loss"],
                   "iterations": s["iterations"], "seconds": s["seconds"],
                   "device": s.get("device"), "stop_reason": s["stop_reason"],
                   **({"resumed": s["resumed"]} if s.get("resumed") else {})}


def _run_here(pending, base, models, emit):
    """In this process, one job after another (Ctrl-C stops the job at hand, which keeps its
    checkpoint, and the batch)."""
    global _PROGRESS
    import signal

    class Forward:
        def put(self, event):
            emit({"event": "iteration", **event})
    _PROGRESS = Forward()

    def stop(signum, frame):
        raise Interrupted(130 if signum == signal.SIGINT else 143)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)} \
        if _main_thread() else {}
    try:
        for job, fp in pending:
            try:
                outcome = execute(_payload(job, fp, base | {"models": models}))
            except Interrupted:
                raise
            except Exception as e:  # the job fails alone
                outcome = e
            yield job, fp, outcome
    finally:
        _PROGRESS = None
        for s, h in previous.items():
            signal.signal(s, h)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run_pool(workers: int, pending, base, models, engine: EngineOptions, emit):
    """Local worker processes, each with its own threads (cores ÷ workers unless given)."""
    import multiprocessing as mp
    import queue as queue_mod
    import threading
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from .run.sessions import physical_cores

    threads = engine.threads or max(1, physical_cores() // workers)
    base = base | {"engine": base["engine"] | {"threads": threads}, "models": models}
    ctx = mp.get_context("spawn")
    events = ctx.Manager().Queue()
    stop = threading.Event()

    def forward():
        while not stop.is_set():
            try:
                emit({"event": "iteration", **events.get(timeout=0.2)})
            except (queue_mod.Empty, EOFError, OSError):
                continue
    relay = threading.Thread(target=forward, daemon=True)
    relay.start()
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(events,))
    try:
        futures = {pool.submit(execute, _payload(job, fp, base)): (job, fp)
                   for job, fp in pending}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for f in done:
                job, fp = futures[f]
                try:
                    outcome = f.result()
                except Exception as e:
                    outcome = e
                yield job, fp, outcome
    except BaseException:
        for p in list(getattr(pool, "_processes", {}).values()):
            p.kill()  # their checkpoints keep the work done so far
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(ray, pending, base, model_dir: Path, model: dict, engine: EngineOptions):
    """Ray tasks: the model's files travel once (the object store), inputs as bytes,
    outputs come back as bytes; each task asks for its threads (and a GPU: see
    :func:`_ray_gpus`)."""
    threads = engine.threads or 2
    files = {name: (model_dir / name).read_bytes() for name in model["files"]}
    files["manifest.json"] = (model_dir / "manifest.json").read_bytes()
    models = ray.put({"sha": model["files"]["loss.onnx"]["sha256"][:16], "key": model["key"],
                      "files": files})
    task = ray.remote(num_cpus=threads, num_gpus=_ray_gpus(engine.device, ray.cluster_resources()),
                      max_retries=2, retry_exceptions=False)(_ray_execute)
    base = base | {"engine": base["engine"] | {"threads": threads, "models_dir": None}}
    refs = {task.remote(_payload(job, fp, base, travel=True), models): (job, fp)
            for job, fp in pending}
    remaining = list(refs)
    try:
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            for ref in done:
                job, fp = refs[ref]
                try:
                    outcome = ray.get(ref)
                except Exception as e:
                    outcome = e
                yield job, fp, outcome
    except BaseException:
        for ref in remaining:
            ray.cancel(ref, force=True)
        raise


def _ray_gpus(device: str, cluster: dict) -> int:
    """GPUs one Ray task asks for: one with ``cuda``, and with ``auto`` when the cluster has
    any — otherwise every task on a GPU node would pick the device by itself and share it
    unscheduled. (``--device cpu`` keeps a mixed cluster's CPU-only nodes busy too.)"""
    return 1 if device == "cuda" or (device == "auto" and cluster.get("GPU", 0) >= 1) else 0


def _ray_execute(payload: dict, models: dict) -> dict:
    return execute(payload | {"models": models})


def _sheet(jobs: list[Job], records: dict[int, dict], outdir: Path) -> Path | None:
    from .io.sheet import contact_sheet

    if not jobs:
        return None
    rows = {j.row: j.content for j in jobs}
    cols = {j.col: j.styles[0] for j in jobs}
    cells = {(j.row, j.col): j.output if records.get(j.index, {}).get("status") in
             ("done", "skipped") else None for j in jobs}
    try:
        return contact_sheet([rows[r] for r in sorted(rows)], [cols[c] for c in sorted(cols)],
                             cells, outdir / SHEET)
    except OSError:
        return None
