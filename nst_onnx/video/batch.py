"""``nst batch --videos``: several clips as independent jobs, in local worker processes or
as Ray tasks, each failing alone.

A clip is the unit: its frames depend on each other (frame i starts from frame i − 1's
result and is pulled towards it), so one clip runs in one worker, frame after frame; clips
have nothing to share, so they spread over the workers. Each job is :func:`stylize_video`
itself — its frames, checkpoints, flow cache and per-frame ``manifest.jsonl`` in the clip's
frames folder — so a re-run of the batch continues every clip where it stopped and redoes no
finished frame. The batch adds one line per clip to ``-o``'s ``manifest.jsonl``.

With ``--ray`` the clips' paths travel, not their bytes: the input videos and ``-o`` must be
on a file system every node sees (a clip's frames and checkpoints are written as it runs).
"""

from __future__ import annotations

import dataclasses
import glob
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..batch import BatchResult, run_jobs, signals_stop_the_batch
from ..batch.manifest import append_record
from ..batch.workers import one_line, ray_client
from ..config import EngineOptions, LossSpec, LossWeights, RunOptions, VideoOptions
from ..errors import BadInput, Interrupted
from ..io.atomic import name_max
from .frames import check_writable, cv2, open_frames

VIDEO_NAME = "{video}__{style}.mp4"


@dataclass
class VideoJob:
    index: int
    source: Path  # a video file, or a folder of frames
    output: Path


class VideosResult(BatchResult):
    """What a batch of clips did: one record per clip (as in ``-o``'s ``manifest.jsonl``)."""

    def summary_line(self) -> str:
        done = self.counts["done"]
        frames = sum(r.get("frames_stylised", 0) for r in self.records)
        line = (f"{done}/{len(self.records)} videos done ({frames} frames stylised) in "
                f"{self.seconds:.1f} s; manifest {self.outdir / 'manifest.jsonl'}")
        failed = [r for r in self.records if r["status"] != "done"]
        return line + "".join(f"\n  failed: {r['video']}: {r['reason']}" for r in failed)


def video_sources(items: list[str]) -> list[Path]:
    """Video files, globs of them, and folders of frames (each folder one clip)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_file() or p.is_dir():
            out.append(p)
            continue
        found = sorted(Path(m) for m in glob.glob(item) if Path(m).is_file())
        if not found:
            raise BadInput(f"video {item} not found (no file, folder or glob match)")
        out += found
    return list(dict.fromkeys(out))


def plan_videos(sources: list[Path], styles: list[Path], outdir: Path) -> list[VideoJob]:
    """One job per clip, named ``{video}__{style}.mp4`` in ``outdir`` (-2, -3 … where two
    clips share a name); no output may be an input, every name fits the file system."""
    outdir.mkdir(parents=True, exist_ok=True)
    style = "+".join(s.stem for s in styles)
    jobs, taken = [], set()
    inputs = {p.resolve() for p in [*sources, *styles]}
    limit = name_max(outdir)
    for i, src in enumerate(sources):
        stem = src.stem if src.is_file() else src.name
        name = VIDEO_NAME.format(video=stem, style=style)
        k = 2
        while name in taken:
            name = VIDEO_NAME.format(video=f"{stem}-{k}", style=style)
            k += 1
        taken.add(name)
        out = outdir / name
        if len(f"{Path(name).stem}_frames".encode()) > limit - 40 or out.resolve() in inputs:
            raise BadInput(f"cannot write {out}: the name is too long for this file system, "
                           "or it is one of the inputs (use another -o folder)")
        check_writable(out)
        jobs.append(VideoJob(i, src, out))
    return jobs


def batch_videos(videos: list[str], styles: list[str | Path], outdir: str | Path, *,
                 run: RunOptions, weights: LossWeights, video: VideoOptions,
                 engine: EngineOptions, spec: LossSpec, workers: int | None = None,
                 ray: str | None = None, log: Callable[[str], None] = print,
                 progress: Callable[[dict], None] | None = None) -> VideosResult:
    """Stylise every clip in ``videos`` with ``styles``; everything the whole batch could be
    refused for is refused before the first frame; a clip that fails fails alone.
    ``progress`` gets ``{"event": "iteration", "index", "iteration": frame, "iterations":
    frames, "loss"}`` after each frame and ``{"event": "job", "record"}`` after each clip."""
    from ..graphs.export import read_manifest as read_model_manifest
    from ..run.engine import model_for

    cv2()  # a missing [video] extra refuses the batch, not each clip
    video.validate()
    run.validate()
    engine.validate()
    outdir = Path(outdir)
    styles = [Path(s) for s in styles]
    for s in styles:
        if not s.is_file():
            raise BadInput(f"{s} not found")
    ray_mod = ray_client(ray) if ray else None
    jobs = plan_videos(video_sources(videos), styles, outdir)
    model_dir = model_for(engine, spec, log)
    model = read_model_manifest(model_dir)
    result, start = VideosResult([], outdir, 0.0), time.perf_counter()
    emit = progress or (lambda e: None)
    emit({"event": "start", "total": len(jobs)})
    pending = []
    for job in jobs:  # from the headers: a clip that cannot be read fails alone, at once
        try:
            open_frames(job.source, video.start, video.end, video.every, run.max_image_pixels)
            pending.append((job, None))
        except BadInput as e:
            result.records.append(_record(job, {"status": "failed", "reason": str(e)}, outdir))
            emit({"event": "job", "record": result.records[-1]})
    base = {"engine": dataclasses.asdict(engine), "spec": dataclasses.asdict(spec),
            "models": str(model_dir.parent), "job_fn": execute_video,
            "styles": [str(s) for s in styles],
            "run": dataclasses.asdict(run), "weights": dataclasses.asdict(weights),
            "video": dataclasses.asdict(video)}

    def make(job: VideoJob, _fp, base: dict, _travel: bool) -> dict:
        return base | {"index": job.index, "source": str(job.source),
                       "output": str(job.output)}
    try:
        with signals_stop_the_batch():
            for job, _fp, outcome in run_jobs(pending, base, workers, ray_mod, model_dir,
                                              model, engine, run, emit, make):
                rec = ({"status": "failed", "reason": one_line(outcome)}
                       if isinstance(outcome, BaseException) else outcome["summary"])
                result.records.append(_record(job, rec, outdir))
                emit({"event": "job", "record": result.records[-1]})
    except (Interrupted, KeyboardInterrupt) as e:
        result.interrupted = e if isinstance(e, Interrupted) else Interrupted(130)
    result.records.sort(key=lambda r: r["job"])
    result.seconds = time.perf_counter() - start
    return result


def _record(job: VideoJob, rec: dict, outdir: Path) -> dict:
    line = {"job": job.index, "video": str(job.source), "output": str(job.output), **rec}
    append_record(outdir, line)
    return line


def execute_video(payload: dict) -> dict:
    """One clip, in whichever worker it lands (``nst batch``'s worker runs a payload's
    ``job_fn``): :func:`stylize_video`, each frame reported as an iteration of the job."""
    from ..batch import workers
    from . import stylize_video

    st = workers._engine(payload["engine"], payload["spec"], payload["models"])
    index = payload["index"]
    if workers._PROGRESS is not None:
        workers._PROGRESS.put({"event": "started", "index": index})

    def on_frame(event: dict) -> None:
        if workers._PROGRESS is not None:
            workers._PROGRESS.put({"event": "iteration", "index": index,
                                   "iteration": event["index"], "iterations": event["total"],
                                   "loss": event["record"].get("final_loss") or 0.0})
    r = stylize_video(st.engine, payload["source"], payload["styles"],
                      RunOptions(**payload["run"]), LossWeights(**payload["weights"]),
                      VideoOptions(**payload["video"]), output=Path(payload["output"]),
                      on_frame=on_frame)
    if r.interrupted is not None:
        raise r.interrupted
    if r.stopped:
        raise BadInput(r.stopped)
    s = r.summary()
    return {"summary": {"status": "done", "frames": s["frames"],
                        "frames_stylised": s["stylised"], "frames_kept": s["skipped"],
                        "frames_dir": s["frames_dir"], "seconds": s["seconds"],
                        "frames_per_minute": s["frames_per_minute"]}}
