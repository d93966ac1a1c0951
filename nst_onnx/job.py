"""A whole job: the scale plan, the run of one problem (:func:`optimize`), and the run over
scales (:func:`transfer`) with its checkpoints and resume.

Coarse-to-fine: each scale starts from the previous result upscaled (Lanczos), the targets
recomputed at its size. A job's fingerprint (settings, decoded inputs, model) ties its
checkpoint to it, so only the very same job resumes from one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .config import (
    AUTO_ITERATIONS,
    AUTO_MULTISCALE_FROM,
    COARSEST,
    DEFAULT_ITERATIONS,
    INITS,
    LossWeights,
    RunOptions,
    fingerprint_settings,
    settings_dict,
)
from .errors import BadInput, Interrupted
from .io.checkpoint import Checkpoint, CheckpointError, load_checkpoint, size_bound
from .io.images import load_image, to_pil
from .problem import Problem, Temporal, fit_content, listed, prepare, shapes
from .run import resources
from .run.device_optim import adam_onnx, lbfgs_onnx
from .run.engine import Engine
from .run.progress import (
    BUDGET_REACHED,
    Callback,
    CheckpointTimer,
    OptimizeResult,
    StopRule,
    chain,
)
from .run.scipy_lbfgs import lbfgs

RESUME_MODES = ("never", "auto", "require")


@dataclass
class Result:
    """A finished run: the image and how it got there."""

    image: Image.Image
    optimize: OptimizeResult
    settings: dict = field(default_factory=dict)
    scales: list[dict] = field(default_factory=list)  # per scale, for coarse-to-fine runs
    memory: dict = field(default_factory=dict)  # the estimate checked before the run
    model: dict = field(default_factory=dict)  # key and loss.onnx SHA-256 of the model used
    engine: dict = field(default_factory=dict)  # device and threads
    resumed: dict = field(default_factory=dict)  # the checkpoint a resumed run started from
    fingerprint: str = ""  # of settings, inputs and model (fingerprint_images)
    pixels: np.ndarray | None = field(default=None, repr=False)  # (H, W, 3) float32 0..255:
    #                                                              the image before 8 bits

    def summary(self) -> dict:
        """Totals over all scales; initial loss of the first scale, final of the last."""
        o = self.optimize
        scales = self.scales or [scale_summary(o)]
        before = self.resumed.get("iterations_before", 0)  # done by the run that stopped
        iterations = sum(s["iterations"] for s in scales) + before
        seconds = sum(s["seconds"] for s in scales)
        eval_seconds = sum(s["eval_seconds"] for s in scales)
        ran = max(iterations - before, 1)
        return {**self.engine, **self.model, "fingerprint": self.fingerprint,
                "settings": self.settings, "memory": self.memory,
                "iterations": iterations,
                "evaluations": sum(s["evaluations"] for s in scales),
                "initial_loss": scales[0]["initial_loss"],
                "initial_terms": scales[0]["initial_terms"],
                "final_loss": o.loss, "final_terms": o.terms, "seconds": seconds,
                "seconds_per_iteration": seconds / ran,
                "eval_seconds": eval_seconds, "optimizer_seconds": seconds - eval_seconds,
                "host_bytes_per_iteration": sum(s["host_bytes"] for s in scales) / ran,
                "stop_reason": o.stop_reason, "restarts": o.restarts, "scales": self.scales,
                **({"resumed": self.resumed} if self.resumed else {})}


def scale_summary(o: OptimizeResult) -> dict:
    return {"iterations": o.iterations, "evaluations": o.evaluations, "seconds": o.seconds,
            "eval_seconds": o.eval_seconds, "host_bytes": o.host_bytes,
            "initial_loss": o.initial_loss, "initial_terms": o.initial_terms,
            "final_loss": o.loss, "stop_reason": o.stop_reason}


def fingerprint_images(images: list[Image.Image], run: RunOptions, weights: LossWeights,
                       spec, model_sha256: str, temporal: Temporal | None = None) -> str:
    """SHA-256 of what decides a result: the settings, the decoded input pixels (content,
    styles, masks, and an init image's — decoded by the caller, last), the model, and a
    video frame's temporal term. Checkpoints and outputs carry it."""
    h = hashlib.sha256()
    h.update(json.dumps(fingerprint_settings(run, weights, spec), sort_keys=True,
                        default=str).encode())
    h.update(model_sha256.encode())
    for img in images:
        h.update(f"{img.size}".encode())
        h.update(img.tobytes())
    if temporal is not None:
        h.update(f"temporal {temporal.weight!r} {temporal.reliability.shape}".encode())
        for a in (temporal.warped, temporal.reliability):
            h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()


def plan_scales(size: int, scales: int | list[int] | None,
                iterations: int | list[int] | None = None) -> tuple[list[int], list[int]]:
    """Sizes (longest side, coarse → fine) and iterations per scale.

    * ``scales`` None: one scale below 1024 px; from 1024 px up, halve down to ≥ 512 px
      (1024 → 512, 1024; 2048 → 512, 1024, 2048);
    * an int N: N sizes, each half the next, ending at ``size``;
    * a list: those sizes (increasing); the last is the output size.

    ``iterations``: None: 500 for one scale; for several, 120 at the coarsest and 35 at each
    finer one (docs/design.md: upscaled coarse results are no better a start, loss for loss,
    than the content image, so the coarse scales are there for the composition and the fine
    ones add detail). One number N: N at the coarsest, falling geometrically to N/5 (at
    least 50) at the finest. Or one number per scale.
    """
    sizes = _plan_sizes(size, scales)
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
            return plan_scales(size, sizes, its[0])
        if len(its) != len(sizes):
            raise BadInput(f"--iterations has {len(its)} values for {len(sizes)} scales: give "
                           "one per scale, or one for all")
    if min(its) < 1:
        raise BadInput("--iterations must be ≥ 1")
    return sizes, its


def _plan_sizes(size: int, scales: int | list[int] | None) -> list[int]:
    if scales is None:
        sizes = [size]
        while size >= AUTO_MULTISCALE_FROM and sizes[0] // 2 >= COARSEST:
            sizes.insert(0, sizes[0] // 2)
        return sizes
    if isinstance(scales, int):
        if scales < 1:
            raise BadInput("--scales must be ≥ 1")
        return sorted({max(1, round(size / 2 ** k)) for k in range(scales)})
    sizes = [int(v) for v in scales]
    if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
        raise BadInput("--scales must be increasing sizes, e.g. 256,512,1024")
    return sizes


# --------------------------------------------------------------------------- one problem


def optimize(engine: Engine, problem: Problem, run: RunOptions,
             callback: Callback | None = None,
             state: dict[str, np.ndarray] | None = None) -> Result:
    """Optimise the image at the problem's size with ``run``'s optimiser, its stop rule
    applied after ``callback``; refuses (BadInput) what one problem cannot honour: a plan of
    several scales, iterations per scale, or a size other than the problem's."""
    run.validate()
    side = max(problem.shape[:2])
    if run.scales is not None:
        raise BadInput("a prepared problem has one scale: give scales to transfer(), not run()")
    if not (run.iterations is None or isinstance(run.iterations, int)):
        raise BadInput("a prepared problem has one scale: give iterations as one number "
                       "(transfer() takes one per scale)")
    if run.size is not None and run.size != side:
        raise BadInput(f"size={run.size}, but this problem was prepared at {side} px: prepare "
                       "it at that size")
    iterations = run.iterations if run.iterations is not None else DEFAULT_ITERATIONS
    init = run.init
    if isinstance(init, (str, os.PathLike)) and init not in INITS:
        init = load_image(init, "init image", run.max_image_pixels, engine.log)
    x0 = problem.initial(init, run.seed)
    hooks = chain(callback, StopRule(run.stop_rule()))
    if run.optimizer == "lbfgs":
        bytes_before = problem.evaluator.host_bytes
        res = lbfgs(problem.evaluate, x0, iterations, run.pairs, hooks)
        res.host_bytes = problem.evaluator.host_bytes - bytes_before
    else:
        loop = engine.device_loop(problem.evaluator, problem.shape[:2])
        res = lbfgs_onnx(loop, x0, iterations, run.pairs, hooks, state) \
            if run.optimizer == "lbfgs-onnx" else \
            adam_onnx(loop, x0, iterations, run.lr, hooks, state)
    return _result(engine, problem, dataclasses.replace(run, size=side, iterations=iterations),
                   res)


def _result(engine: Engine, problem: Problem, run: RunOptions, res: OptimizeResult) -> Result:
    settings = settings_dict(run, problem.weights, engine.spec)
    finished = problem.finish(res.x)
    return Result(to_pil(finished[None]), res, settings,
                  pixels=finished.transpose(1, 2, 0).astype(np.float32),
                  model={"model": problem.manifest["key"],
                         "model_sha256": problem.manifest["files"]["loss.onnx"]["sha256"]},
                  engine={"device": engine.device, "providers": engine.providers,
                          "threads": engine.threads_used,
                          "tf32": engine.options.tf32 if engine.device == "cuda" else None})


def _ended(engine: Engine, problem: Problem, run: RunOptions, ckpt: Checkpoint) -> Result:
    """The result a checkpoint of an ended run holds (its loss evaluated once): what a run
    killed while its output was saved resumes to."""
    t = problem.evaluate(ckpt.x)
    res = OptimizeResult(ckpt.x, t.loss, t.terms, t.loss, t.terms, 0, 1, ckpt.stop_reason, 0.0)
    return _result(engine, problem, run, res)


# --------------------------------------------------------------------------- over scales


@dataclass
class Inputs:
    """A job's images, decoded once (under the pixel limit), for every scale and the
    fingerprint."""

    content: Image.Image
    styles: list[Image.Image]
    masks: list[Image.Image] | None
    init: str | Image.Image  # content | noise | style, or the decoded init image

    @classmethod
    def load(cls, content, styles, masks, init, pixels: int | None, log) -> Inputs:
        def one(src, what):
            return load_image(src, what, pixels, log)
        return cls(one(content, "content image"),
                   [one(s, f"style image {i + 1}") for i, s in enumerate(listed(styles))],
                   None if masks is None else
                   [one(m, f"mask {i + 1}") for i, m in enumerate(listed(masks))],
                   init if isinstance(init, str) and init in INITS else one(init, "init image"))

    @property
    def images(self) -> list[Image.Image]:
        """What the fingerprint hashes, in its order."""
        init = [self.init] if isinstance(self.init, Image.Image) else []
        return [self.content, *self.styles, *(self.masks or []), *init]


def find_checkpoint(checkpoint, fp: str, resume: str, plan: tuple[list[int], list[int]],
                    history: int, log: Callable[[str], None]) -> Checkpoint | None:
    """The checkpoint to resume from: None with ``never``; with ``auto`` one made by this very
    job or None (any other is ignored with a notice); ``require`` as auto, but a missing,
    unreadable, mismatched or damaged checkpoint is an error. One whose run had ended (its
    output not yet written) fits only at the last scale, within the iterations asked for."""
    if checkpoint is None or resume == "never":
        return None
    path = Path(checkpoint)
    sizes, its = plan
    try:
        if not path.exists():
            raise CheckpointError(f"no checkpoint at {path}: nothing to resume")
        ckpt = load_checkpoint(path, fp, size_bound(sizes[-1], history))
        last = len(its) - 1
        fits = ckpt.iteration <= its[ckpt.scale] if ckpt.stop_reason and ckpt.scale == last \
            else ckpt.scale < len(its) and ckpt.iteration < its[ckpt.scale]
        if not fits:
            raise CheckpointError(f"checkpoint {path} does not fit this run's plan")
        return ckpt
    except CheckpointError as e:
        if resume == "require":
            raise
        if path.exists():
            log(f"note: {e}; starting afresh")
        return None


class _Scales:
    """One job's run over its scales: the plan, where it stands (for checkpoints) and what
    each scale did."""

    def __init__(self, engine: Engine, inputs: Inputs, run: RunOptions, weights: LossWeights,
                 plan: tuple[list[int], list[int]], fp: str, checkpoint,
                 ckpt: Checkpoint | None, callback: Callback | None,
                 temporal: Temporal | None = None):
        self.engine, self.inputs, self.run, self.weights = engine, inputs, run, weights
        self.temporal = temporal
        self.sizes, self.its = plan
        self.fp, self.checkpoint, self.ckpt, self.callback = fp, checkpoint, ckpt, callback
        self.timer = CheckpointTimer(run.checkpoint_every)
        self.latest: tuple | None = None  # (progress, scale, iteration there, done overall)
        self.per_scale: list[dict] = []
        self.memory: dict = {}
        self.gamma: tuple[float | None, int] = (None, 1)  # the last scale's γ, its pixels

    def save(self, ended: str = "", result: np.ndarray | None = None) -> None:
        """Keep where the run stands (unless that scale was finished), or, ``ended`` (the
        stop reason), the ``result`` image itself. A checkpoint that cannot be written (a full disk)
        is a warning: the run, and its best image, go on."""
        p, index, iteration, done = self.latest
        if self.checkpoint is not None and (ended or iteration < self.its[index]):
            x, state = (result, {}) if ended else (p.x, p.state())
            try:
                Checkpoint(self.fp, index, iteration, done, self.run.optimizer, x, state,
                           ended).save(Path(self.checkpoint))
            except OSError as e:
                self.engine.log(f"warning: could not write the checkpoint {self.checkpoint} "
                                f"({e.strerror or e}); the run goes on")

    def _hook(self, problem: Problem, index: int, first: int, offset: int) -> Callback:
        """Progress at this scale → where the job stands, its checkpoint timer, and the
        caller's callback with the job's iteration count (x as the output will look)."""
        total = sum(self.its)
        where = dict(scale=self.sizes[index], tiles=problem.tiling)

        def on_progress(p) -> None:
            self.latest = (p, index, first + p.iteration, offset + p.iteration)
            if self.timer.due():
                self.timer.timed(self.save)
            if self.callback:
                self.callback(dataclasses.replace(p, iteration=offset + p.iteration,
                                                  iterations=total, **where,
                                                  fetch=lambda: problem.finish(p.x)))
        return on_progress

    def scale(self, index: int, problem: Problem, start, done: int) -> Result:
        """Run one scale from ``start`` (or the checkpoint, at its scale)."""
        here = self.ckpt is not None and index == self.ckpt.scale
        first = self.ckpt.iteration if here else 0
        if here and self.ckpt.x.shape[1:] != problem.shape[:2]:
            raise CheckpointError(f"checkpoint {self.checkpoint} does not fit this run's sizes")
        state = self.ckpt.state if here and self.ckpt.optimizer == self.run.optimizer else \
            self._carried(problem)
        run = dataclasses.replace(self.run, size=None, scales=None,
                                  iterations=self.its[index] - first,
                                  init=self.ckpt.x if here else start,
                                  stop_tolerance=self.run.stop_rule())
        reason = self.ckpt.stop_reason if here else ""
        if reason and (first == self.its[index] or reason != BUDGET_REACHED):
            result = _ended(self.engine, problem, dataclasses.replace(run, iterations=first),
                            self.ckpt)  # only its output was left to write
        else:
            result = optimize(self.engine, problem, run,
                              self._hook(problem, index, first, done + first), state)
        self.gamma = (result.optimize.gamma, problem.shape[0] * problem.shape[1])
        tiles = problem.tiling
        self.per_scale.append({"size": self.sizes[index], "shape": list(problem.shape[:2]),
                               **({"tile_size": tiles[1], "tiles": tiles[0]} if tiles else {}),
                               **scale_summary(result.optimize),
                               **({"resumed_at": first} if here else {})})
        return result

    def _carried(self, problem: Problem) -> dict | None:
        """L-BFGS's step scale γ from the scale before, grown with the pixels (each term is
        normalised by its layer's size, so the curvature per pixel falls as the pixels
        grow): the new scale's first step is then the right size, where a unit step takes
        ~5 extrapolating evaluations to grow (measured: 6 evaluations for the first
        iteration of every scale)."""
        gamma, pixels = self.gamma
        if gamma is None or self.run.optimizer != "lbfgs-onnx":
            return None
        return {"gamma": np.array(gamma * problem.shape[0] * problem.shape[1] / pixels)}

    def prepare(self, index: int) -> Problem:
        """The problem at scale ``index``; first, the memory the whole run needs, estimated
        from the decoded sizes before any image is resized or any feature computed."""
        i, e = self.inputs, self.engine
        regions = len(i.masks or [])
        shape, style_pixels = shapes(i.content, i.styles, self.sizes[index],
                                     self.weights.style_scale, e.spec.min_side)
        if not self.memory:
            self.memory = resources.check_memory(
                e.device, e.spec, shape, style_pixels, regions, self.sizes[-1], self.run,
                e.log, self.weights.style_scale)
            if "history" in self.memory:  # the history that fits, for every scale
                self.run = dataclasses.replace(self.run, history=self.memory["history"])
        # the free memory the memory check read as the job began (resources.choose_tile)
        free = self.memory.get("available_mb", self.memory.get("gpu_free_mb"))
        tile = resources.choose_tile(e.device, e.spec, *shape, style_pixels, regions, self.run,
                                     free)
        return prepare(e, i.content, i.styles, self.sizes[index], i.masks, self.weights,
                       self.run.max_image_pixels, tile, self.temporal)

    def all(self, before_run, keep_checkpoint: bool = False) -> Result:
        result, start = None, self.inputs.init
        first_scale = self.ckpt.scale if self.ckpt is not None else 0
        done = sum(self.its[:first_scale])
        for index in range(first_scale, len(self.sizes)):
            try:
                problem = self.prepare(index)
            except Interrupted as e:
                if result is None:
                    raise
                result.optimize.interrupted = e  # keep the previous scale's image
                return result
            if before_run and result is None:
                before_run(problem, self.sizes, self.its)
            result = self.scale(index, problem, start, done)
            done, start = done + self.its[index], result.optimize.x
            o = result.optimize
            if o.interrupted is not None or o.error is not None:
                if self.latest is not None:  # resume where it stopped
                    self.save()
                return result
        if self.checkpoint is not None and not keep_checkpoint:
            Path(self.checkpoint).unlink(missing_ok=True)
        elif self.checkpoint is not None and self.latest is not None:
            # the output is the caller's to write
            self.save(result.optimize.stop_reason, result.optimize.x)
        return result


def job_fingerprint(engine: Engine, inputs: Inputs, run: RunOptions, weights: LossWeights,
                    temporal: Temporal | None = None) -> str:
    """The fingerprint :func:`transfer` gives this job (``run`` with its size resolved)."""
    return fingerprint_images(inputs.images, run, weights, engine.spec,
                              engine.manifest["files"]["loss.onnx"]["sha256"], temporal)


def transfer(engine: Engine, content, styles, run: RunOptions, weights: LossWeights, *,
             masks=None, callback: Callback | None = None, before_run=None,
             checkpoint: str | os.PathLike | None = None, resume: str = "never",
             keep_checkpoint: bool = False, temporal: Temporal | None = None) -> Result:
    """The whole job over the scales of :func:`plan_scales` (see
    :meth:`nst_onnx.api.StyleTransfer.transfer`); ``keep_checkpoint``: leave it for the
    caller to remove once the output is safely written (a crash while saving then leaves
    something to resume); ``temporal``: a video frame's temporal term (one scale, at the
    content's size as given)."""
    run.validate()
    if resume not in RESUME_MODES:
        raise ValueError(f"resume={resume!r}: never, auto or require")
    inputs = Inputs.load(content, styles, masks, run.init, run.max_image_pixels, engine.log)
    run = run.at_native(inputs.content.size)
    sizes, its = plan_scales(run.output_size, run.scales, run.iterations)
    fit_content(inputs.content, sizes[0], engine.spec.min_side)
    if temporal is not None and len(sizes) > 1:
        raise BadInput("a frame with a temporal term runs at one scale: give one size")
    fp = job_fingerprint(engine, inputs, run, weights, temporal)
    ckpt = find_checkpoint(checkpoint, fp, resume, (sizes, its), run.pairs, engine.log)
    job = _Scales(engine, inputs, run, weights, (sizes, its), fp, checkpoint, ckpt, callback,
                  temporal)
    result = job.all(before_run, keep_checkpoint)
    result.settings.update(settings_dict(job.run, weights, engine.spec), size=sizes[-1],
                           scales=sizes, iterations=its, history=job.run.pairs)
    result.scales, result.memory, result.fingerprint = job.per_scale, job.memory, fp
    result.resumed = {"checkpoint": str(checkpoint), "iterations_before": ckpt.done} \
        if ckpt is not None else {}
    return result
