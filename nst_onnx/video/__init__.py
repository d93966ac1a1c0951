"""``nst video``: a clip stylised frame after frame with temporal consistency (Ruder,
Dosovitskiy & Brox, "Artistic style transfer for videos", 2016).

Frame 1 is an ordinary job (the content, or ``--init``, and the stop rule). Each later frame
starts from the previous results carried into it by the optical flow (:mod:`.flow`;
disoccluded pixels from the content frame) and is optimised with the temporal term of the
loss graph's video twin, which pulls it towards them where the flow is reliable. A frame is
one :func:`~nst_onnx.job.transfer` at one scale, so its checkpoint, stop rule and memory
check are the picture's.

Resumable: each finished frame is written at once (atomic PNG, its fingerprint in the PNG
and in ``manifest.jsonl`` beside it); a re-run skips every frame whose fingerprint (settings,
the content frame, the styles, and the earlier results it was carried from) still matches
and continues at the first that does not, from its checkpoint when it was interrupted. The
next frame always uses the previous result as written (8 bits), so a resumed clip is the
clip an uninterrupted run makes. The video file is assembled from the frames at the end.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .._version import __version__
from ..batch.manifest import MANIFEST, already_done, append_record, read_manifest
from ..config import NATIVE, LossWeights, RunOptions, VideoOptions
from ..errors import BadInput, Interrupted
from ..io import color
from ..io.atomic import sha256_file
from ..io.checkpoint import checkpoint_path
from ..io.images import fitted_size, load_image, save_image
from ..job import Inputs, job_fingerprint, transfer
from ..problem import Temporal, listed
from ..run.engine import Engine
from .flow import FlowCache, carry, start_image
from .frames import Frames, check_writable, open_frames, write_video

__all__ = ["stylize_video", "VideoResult", "frame_name", "frames_dir_for"]


def frame_name(i: int) -> str:
    return f"frame_{i:06d}.png"


def frames_dir_for(output: Path) -> Path:
    """Where the frames of ``output`` go when no --frames-dir is given: beside it."""
    return output.with_name(f"{output.stem}_frames")


@dataclass
class VideoResult:
    """What a run did: one record per frame (as in ``manifest.jsonl``), in order."""

    frames_dir: Path
    output: Path | None
    total: int
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: Interrupted | None = None
    stopped: str = ""  # why the run stopped before the last frame (a frame not decoded)

    @property
    def stylised(self) -> int:
        return sum(1 for r in self.records if r["status"] == "done")

    def summary(self) -> dict:
        ran = [r for r in self.records if r["status"] == "done"]
        secs = sum(r["seconds"] for r in ran)
        return {"frames": self.total, "written": len(self.records), "stylised": len(ran),
                "skipped": len(self.records) - len(ran), "frames_dir": str(self.frames_dir),
                "output": str(self.output) if self.output else None,
                "manifest": str(self.frames_dir / MANIFEST), "seconds": self.seconds,
                "frames_per_minute": 60 * len(ran) / secs if secs else None,
                "complete": len(self.records) == self.total, "stopped": self.stopped or None,
                "records": self.records}


def _plan(run: RunOptions, frames: Frames) -> tuple[RunOptions, RunOptions, tuple[int, int]]:
    """(frame 1's run, every later frame's run, the working (W, H)). Later frames start from
    the previous result at full size: one scale (a coarse one would throw that start away),
    its iteration budget the last scale's."""
    side = max(frames.size) if run.size == NATIVE else run.output_size
    first = dataclasses.replace(run, size=side, tile_size=None)
    its = run.iterations if run.iterations is None or isinstance(run.iterations, int) \
        else list(run.iterations)[-1]
    later = dataclasses.replace(first, scales=1, iterations=its)
    return first, later, fitted_size(frames.size, side)


class _Clip:
    """The frames of one run kept as long as a later frame looks back to them."""

    def __init__(self, frames_dir: Path, video: VideoOptions):
        self.dir, self.video = frames_dir, video
        self.flows = FlowCache(frames_dir / ".flow", video.flow)
        self.contents: dict[int, np.ndarray] = {}
        self.results: dict[int, np.ndarray] = {}

    def keep(self, i: int, content: np.ndarray, result: np.ndarray) -> None:
        self.contents[i], self.results[i] = content, result
        reach = max(self.video.temporal_frames)
        for k in [k for k in self.contents if k <= i - reach]:
            del self.contents[k], self.results[k]

    def temporal(self, i: int, content: np.ndarray, weights: LossWeights
                 ) -> tuple[Temporal | None, Image.Image | None]:
        """(the temporal term, the starting image) of frame ``i``; (None, None) for frame 1
        and for frame-by-frame runs (weight 0)."""
        looks = [i - j for j in self.video.temporal_frames if i - j in self.results]
        if not looks or self.video.temporal_weight == 0:
            return None, None
        earlier = [(*self.flows.pair(i, content, k, self.contents[k]), self.results[k])
                   for k in looks]
        carried = carry(content, earlier)
        warped = carried.warped
        if weights.preserve_colors == "luminance":  # that mode optimises a grey image
            warped = color.grey(color.luminance(warped.astype(np.float64))).astype(np.float32)
        return (Temporal(warped, carried.reliability, self.video.temporal_weight),
                Image.fromarray(start_image(content, carried)))


def stylize_video(engine: Engine, source, styles, run: RunOptions, weights: LossWeights,
                  video: VideoOptions, *, output: Path | None = None,
                  frames_dir: Path | None = None, masks=None,
                  on_frame: Callable[[dict], None] | None = None,
                  callback=None) -> VideoResult:
    """Stylise the selected frames of ``source`` into ``frames_dir`` (default: beside
    ``output``), then assemble ``output``. Everything that can be refused is refused before
    the first frame; ``on_frame(event)`` after each frame (its record, i, n, ETA seconds);
    ``callback`` gets each iteration's progress."""
    video.validate()
    run.validate()
    if output is None and frames_dir is None:
        raise BadInput("give an output video (-o) and/or --frames-dir")
    frames = open_frames(source, video.start, video.end, video.every, run.max_image_pixels)
    if output is not None:
        check_writable(output)
    frames_dir = Path(frames_dir) if frames_dir is not None else frames_dir_for(output)
    frames_dir.mkdir(parents=True, exist_ok=True)
    # decoded once for the clip, not once per frame (every frame's job takes them as images)
    styles = _decoded(styles, "style image", run, engine)
    masks = None if masks is None else _decoded(masks, "mask", run, engine)
    first, later, size = _plan(run, frames)
    done = read_manifest(frames_dir)
    clip = _Clip(frames_dir, video)
    result = VideoResult(frames_dir, output, len(frames))
    start = time.perf_counter()
    decoded = iter(frames)
    for i in range(1, len(frames) + 1):
        try:
            number, img = next(decoded)
        except BadInput as e:
            result.stopped = f"{e}; frames 1–{i - 1} are kept in {frames_dir}"
            break
        content = np.asarray(img.convert("RGB").resize(size, Image.LANCZOS)
                             if img.size != size else img.convert("RGB"))
        try:
            rec = _frame(engine, clip, i, number, content, styles, first if i == 1 else later,
                         weights, masks, done, callback)
        except Interrupted as e:  # the frame's checkpoint, if it got one, resumes it
            result.interrupted = e
            break
        result.records.append(rec)
        if on_frame:
            ran = [r["seconds"] for r in result.records if r["status"] == "done"]
            eta = (sum(ran) / len(ran)) * (len(frames) - i) if ran else None
            on_frame({"record": rec, "index": i, "total": len(frames), "eta": eta})
    if output is not None and len(result.records) == len(frames):
        write_video([frames_dir / r["file"] for r in result.records], output,
                    video.fps or frames.fps)
    result.seconds = time.perf_counter() - start
    return result


def _decoded(sources, what: str, run: RunOptions, engine: Engine) -> list[Image.Image]:
    return [load_image(src, f"{what} {k + 1}", run.max_image_pixels, engine.log)
            for k, src in enumerate(listed(sources))]


def _frame(engine: Engine, clip: _Clip, i: int, number: int, content: np.ndarray, styles,
           run: RunOptions, weights: LossWeights, masks, done: dict, callback) -> dict:
    """Frame ``i``: skipped when already written by these very settings and inputs, else
    stylised and written; its record. Interrupted: raised, its checkpoint kept."""
    temporal, start_img = clip.temporal(i, content, weights)
    if start_img is not None:
        run = dataclasses.replace(run, init=start_img)
    path = clip.dir / frame_name(i)
    inputs = Inputs.load(Image.fromarray(content), styles, masks, run.init,
                         run.max_image_pixels, engine.log)
    fp = job_fingerprint(engine, inputs, run, weights, temporal)
    base = {"output": str(path), "file": path.name, "frame": i, "source_frame": number,
            "fingerprint": fp, "temporal": temporal is not None}
    if already_done(path, fp, done):
        with Image.open(path) as img:
            clip.keep(i, content, np.asarray(img.convert("RGB")))
        old = done.get(str(path), {})
        return {**old, **base, "status": "skipped", "seconds": 0.0}
    ckpt = checkpoint_path(path)
    res = transfer(engine, inputs.content, styles, run, weights, masks=masks,
                   callback=callback, checkpoint=ckpt, resume="auto", keep_checkpoint=True,
                   temporal=temporal)
    o = res.optimize
    if o.error is not None:
        raise o.error
    if o.interrupted is not None:
        raise o.interrupted
    s = res.summary()
    rec = {**base, "status": "done", "iterations": s["iterations"],
           "evaluations": s["evaluations"], "initial_loss": s["initial_loss"],
           "final_loss": s["final_loss"], "final_terms": s["final_terms"],
           "seconds": s["seconds"], "stop_reason": s["stop_reason"]}
    save_image(res.image, path, {"nst-onnx": json.dumps(
        {"version": __version__, **rec, "settings": s["settings"]}, default=str)})
    rec["output_sha256"] = sha256_file(path)
    append_record(clip.dir, rec)
    ckpt.unlink(missing_ok=True)
    clip.keep(i, content, np.asarray(res.image))
    return rec
