"""Many pictures: every content × style pair of files, folders or globs (or the pairs of a
jobs file), each a job; outputs named by a template, one manifest line per job, a contact
sheet at the end.

The driver (the calling process) plans the jobs (:mod:`.plan`: every output inside ``-o``,
none over an input), skips those already done — an output whose fingerprint (settings,
decoded inputs, model) matches the manifest or the PNG's own metadata — runs the rest
(:mod:`.workers`: here, in local worker processes, or as Ray tasks), and owns every write:
outputs (atomic), the manifest (:mod:`.manifest`: one line appended per finished job), the
contact sheet. A job fails alone, with its one-line reason: bad inputs, a name the file
system refuses, a write that fails, its worker's death. Jobs checkpoint beside their output
(``--checkpoint-every``), so a batch stopped by anything, ``kill -9`` included, continues on
the next run without redoing finished work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import (
    NAME_TEMPLATE,
    EngineOptions,
    LossSpec,
    LossWeights,
    RunOptions,
    settings_dict,
    split_settings,
)
from ..errors import BadInput, Interrupted, NstError
from ..io.atomic import sha256_file, write_bytes
from ..io.checkpoint import checkpoint_path
from ..io.images import EncodedImage
from .manifest import MANIFEST, already_done, append_record, read_manifest
from .plan import SHEET, Job, check_template, expand, plan, read_jobs_file, row_settings
from .workers import (
    default_workers,
    one_line,
    preview_path,
    ray_client,
    run_here,
    run_pool,
    run_ray,
)

__all__ = ["MANIFEST", "SHEET", "BatchResult", "Job", "batch", "default_workers", "expand",
           "plan", "preview_path", "read_jobs_file", "read_manifest", "row_settings"]


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


def batch(contents: list | None = None, styles: list | None = None, outdir: str | os.PathLike =
          "out", *, run: RunOptions | None = None, weights: LossWeights | None = None,
          engine: EngineOptions | None = None, spec: LossSpec | None = None,
          jobs_file: str | os.PathLike | None = None, template: str = NAME_TEMPLATE,
          workers: int | None = None, ray: str | None = None, redo: bool = False,
          preview_every: float | None = None, sheet: bool = True,
          log: Callable[[str], None] = print,
          progress: Callable[[dict], None] | None = None, **overrides) -> BatchResult:
    """Run a batch (module docstring); ``progress`` gets events: ``{"event": "start",
    "total"}``, ``{"event": "iteration", "index", "iteration", "iterations", "loss"}`` and
    ``{"event": "job", "record"}``. ``redo``: run jobs already done too (``run.force`` is
    the memory estimate's override, as everywhere). ``preview_every``: each job keeps a JPEG
    of its current iterate at :func:`preview_path` (at most that often, seconds) — ``nst
    serve``'s live view; ``sheet``: write the contact sheet. Returns every job's manifest record."""
    from ..graphs.export import read_manifest as read_model_manifest
    from ..run.engine import model_for

    start = time.perf_counter()
    run, weights = split_settings(run, weights, **overrides)
    run.validate()
    engine = engine or EngineOptions()
    engine.validate()
    spec = spec or LossSpec()
    outdir = Path(outdir)
    check_template(template)  # before -o is made
    _check_outdir(outdir)
    ray_mod = ray_client(ray) if ray else None  # a missing or unreachable Ray fails before any work
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
    previous = read_manifest(outdir, torn := [])
    if torn[0]:
        log(f"note: {outdir / MANIFEST}: skipped {torn[0]} unreadable lines (a torn write?)")
    pending = _to_run(jobs, previous, spec, model, model_sha, redo, record)
    interrupted = None
    if pending:
        base = {"engine": dataclasses.asdict(engine), "spec": dataclasses.asdict(spec),
                "models": str(model_dir.parent), "preview_every": preview_every}
        try:
            with signals_stop_the_batch():
                for job, fp, outcome in run_jobs(pending, base, workers, ray_mod, model_dir,
                                                 model, engine, run, emit):
                    record(_finish(job, fp, outcome, _base_record(job, model, model_sha)))
        except (Interrupted, KeyboardInterrupt) as e:
            interrupted = e if isinstance(e, Interrupted) else Interrupted(130)
    ordered = [records[j.index] for j in jobs if j.index in records]
    sheet = _sheet(jobs, records, outdir) if sheet else None
    return BatchResult(ordered, outdir, time.perf_counter() - start, skipped_inputs, sheet,
                       interrupted)


def run_jobs(pending, base, workers, ray_mod, model_dir, model, engine, run, emit,
             make=None):
    """Ray tasks, local worker processes, or this process; ``make(job, fp, base, travel)``
    is a job's payload (an image job's by default; ``nst batch --videos`` gives its own)."""
    make = make or _payload
    if ray_mod is not None:
        base = base | {"engine": base["engine"] | {"threads": engine.threads or 2,
                                                   "models_dir": None}, "models": None}
        return run_ray(ray_mod, pending, lambda job, fp: make(job, fp, base, True),
                       model_dir, model, engine)
    n = workers or default_workers(engine, run, len(pending))
    if n > 1:
        from ..run.sessions import physical_cores

        threads = engine.threads or max(1, physical_cores() // n)
        base = base | {"engine": base["engine"] | {"threads": threads}}
        return run_pool(n, pending, lambda job, fp: make(job, fp, base, False), emit)
    return run_here(pending, lambda job, fp: make(job, fp, base, False), emit)


class signals_stop_the_batch:
    """SIGINT / SIGTERM raise :class:`Interrupted` in the driver: the job at hand (or the
    workers' jobs) checkpoint and stop, finished results are kept."""

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self.previous[s] = signal.signal(s, self.stop)
        return self

    @staticmethod
    def stop(signum, frame):
        raise Interrupted(130 if signum == signal.SIGINT else 143)

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


def _to_run(jobs: list[Job], previous: dict, spec: LossSpec, model: dict, model_sha: str,
            redo: bool, record: Callable[[dict], None]) -> list[tuple[Job, str]]:
    """The jobs to run, each with its fingerprint; those already done (unless ``redo``) and
    those whose inputs cannot be read are recorded as skipped or failed instead."""
    from ..job import Inputs, fingerprint_images

    pending = []
    for job in jobs:
        base = _base_record(job, model, model_sha)
        try:
            if job.problem:
                raise BadInput(job.problem)
            job.output.parent.mkdir(parents=True, exist_ok=True)  # inside -o (planned)
            inputs = Inputs.load(job.content, job.styles, job.masks, job.run.init,
                                 job.run.max_image_pixels, lambda m: None)
            fp = fingerprint_images(inputs.images, job.run, job.weights, spec, model_sha)
        except (NstError, OSError) as e:
            record(base | {"status": "failed", "reason": one_line(e)})
            continue
        if not redo and already_done(job.output, fp, previous):
            record(base | {"status": "skipped", "fingerprint": fp,
                           "reason": "already done with the same settings, inputs and model",
                           "output_sha256": sha256_file(job.output)})
        else:
            pending.append((job, fp))
    return pending


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
    """Write a finished job's output (atomically) and make its manifest record. The job's
    checkpoint goes only once the output is in place; a write that fails (a full disk) fails
    this job alone and keeps the checkpoint, from which the next run finishes it."""
    if isinstance(outcome, BaseException):
        return base | {"status": "failed", "fingerprint": fp, "reason": one_line(outcome)}
    try:
        write_bytes(job.output, outcome["data"])
    except OSError as e:
        kept = checkpoint_path(job.output)
        return base | {"status": "failed", "fingerprint": fp, "reason": (
            f"could not write {job.output} ({e.strerror or e}; it needs "
            f"{len(outcome['data']) / 1e6:.1f} MB)" + (f"; its checkpoint {kept} is kept: run "
                                                        "again to finish" if kept.exists()
                                                        else ""))}
    checkpoint_path(job.output).unlink(missing_ok=True)  # only now: the output is in place
    preview_path(job.output).unlink(missing_ok=True)
    s = outcome["summary"]
    return base | {"status": "done", "fingerprint": fp, "output_sha256":
                   hashlib.sha256(outcome["data"]).hexdigest(),
                   "initial_loss": s["initial_loss"], "final_loss": s["final_loss"],
                   "iterations": s["iterations"], "seconds": s["seconds"],
                   "device": s.get("device"), "stop_reason": s["stop_reason"],
                   **({"resumed": s["resumed"]} if s.get("resumed") else {})}


def _sheet(jobs: list[Job], records: dict[int, dict], outdir: Path) -> Path | None:
    from ..io.sheet import contact_sheet

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
