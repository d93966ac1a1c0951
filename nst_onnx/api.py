"""The public Python API: ``StyleTransfer`` → ``prepare`` a ``Problem`` → ``run`` / ``stylize``.

    st = StyleTransfer(device="cpu")            # finds or exports the model
    img = st.stylize("photo.jpg", "painting.jpg", size=512)

    problem = st.prepare("photo.jpg", ["a.jpg", "b.jpg"], size=256, style_blend=[0.7, 0.3])
    loss, grad = problem.loss_and_grad(x)       # x: float64 (H, W, 3), RGB in [0, 255]

Settings are the dataclasses of :mod:`nst_onnx.config` (``RunOptions``, ``LossWeights``,
``EngineOptions``, ``LossSpec``), or their fields as keyword arguments. This module is the
face only: sessions live in :mod:`.run.engine`, problems in :mod:`.problem`, jobs over
scales in :mod:`.job`, diagnostics in :mod:`.diagnostics`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from .config import (
    DEFAULT_SIZE,
    MAX_PIXELS,
    EngineOptions,
    LossSpec,
    LossWeights,
    RunOptions,
    split_engine,
    split_settings,
)
from .graphs.export import read_manifest
from .job import Result, fingerprint_images, optimize, plan_scales, transfer
from .problem import Problem, fit_content, prepare
from .run.engine import Engine, model_for
from .run.progress import Progress

__all__ = ["StyleTransfer", "Problem", "Result", "Progress", "export", "plan_scales",
           "fingerprint_images", "fit_content", "model_for"]


class StyleTransfer:
    """Style transfer with one exported model on one device; reuse it for many images.

    ``StyleTransfer(device="cpu", threads=2, pooling="avg")``: keyword arguments are the
    fields of :class:`~nst_onnx.config.EngineOptions` and :class:`~nst_onnx.config.LossSpec`.
    """

    def __init__(self, engine: EngineOptions | None = None, spec: LossSpec | None = None, *,
                 log: Callable[[str], None] = print, **options):
        self.engine = Engine(*split_engine(engine, spec, **options), log=log)

    # what the engine resolved, for callers and summaries
    options = property(lambda self: self.engine.options)
    spec = property(lambda self: self.engine.spec)
    device = property(lambda self: self.engine.device)
    threads = property(lambda self: self.engine.threads)
    threads_used = property(lambda self: self.engine.threads_used)
    providers = property(lambda self: self.engine.providers)
    model_dir = property(lambda self: self.engine.model_dir)
    manifest = property(lambda self: self.engine.manifest)
    min_size = property(lambda self: self.engine.spec.min_side)

    @property
    def log(self) -> Callable[[str], None]:
        return self.engine.log

    @log.setter
    def log(self, log: Callable[[str], None]) -> None:
        self.engine.log = log

    def features(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """(1, 3, H, W) float32 images → [{'features_relu4_2': …, 'gram_relu1_1': …}, …]."""
        return self.engine.features(images)

    def prepare(self, content, styles, size: int = DEFAULT_SIZE, *, masks=None,
                weights: LossWeights | None = None,
                max_image_pixels: int | None = MAX_PIXELS, tile_size: int | None = None,
                **weight_overrides) -> Problem:
        """Load and resize the images, compute the targets once, and bind them.

        ``weights`` / ``weight_overrides``: :class:`~nst_onnx.config.LossWeights` (or its
        fields). ``max_image_pixels``: refuse image files whose header claims more (None:
        no limit). ``masks``: one greyscale image per style, drawn over the content (white:
        this style, black: not it; grey blends): spatial control by guided Gram matrices.
        ``tile_size``: evaluate the objective, and the targets, in tiles that each own that
        many px a side (a multiple of 16; the halo comes on top): the same loss and
        gradient, up to float32 summation order, in the memory of one window.
        """
        lw = dataclasses.replace(weights or LossWeights(), **weight_overrides)
        return prepare(self.engine, content, styles, size, masks, lw, max_image_pixels,
                       tile_size)

    def run(self, problem: Problem, run: RunOptions | None = None,
            callback: Callable[[Progress], None] | None = None,
            state: dict[str, np.ndarray] | None = None, **overrides) -> Result:
        """Optimise the image at the problem's size; returns the best iterate seen, whatever
        stopped the run — the iteration budget, or the stop rule (``stop_tolerance``; by
        default on unless ``iterations`` is given), which the stop reason names.
        ``run`` / ``overrides``: :class:`~nst_onnx.config.RunOptions` (one scale: a list of
        iterations, ``scales`` or another ``size`` are refused); ``state``: a device
        optimiser's state to resume (``Progress.state()``)."""
        run = dataclasses.replace(run or RunOptions(), **overrides)
        return optimize(self.engine, problem, run, callback, state)

    def transfer(self, content, styles, run: RunOptions | None = None,
                 weights: LossWeights | None = None, *, masks=None,
                 callback: Callable[[Progress], None] | None = None,
                 before_run: Callable[[Problem, list[int], list[int]], None] | None = None,
                 checkpoint: str | os.PathLike | None = None, resume: str = "never",
                 keep_checkpoint: bool = False, **overrides) -> Result:
        """The whole job: coarse-to-fine over the sizes of :func:`plan_scales`, each scale
        started from the previous result upscaled (Lanczos), targets recomputed per scale;
        the memory estimate is checked before the first.

        ``run``, ``weights`` or ``overrides``: :class:`~nst_onnx.config.RunOptions` and
        :class:`~nst_onnx.config.LossWeights` (or their fields). ``masks``: see
        :meth:`prepare`. ``before_run(problem, sizes, iterations)`` is called once the first
        scale is prepared, before any optimisation. Returns the final scale's result; its
        summary counts iterations, evaluations and seconds over all scales.

        ``checkpoint``: a file (:func:`~nst_onnx.io.checkpoint.checkpoint_path` of the
        output) that keeps where the run stands, written every ``run.checkpoint_every``
        seconds of work and when interrupted, removed when the run succeeds — or, with
        ``keep_checkpoint``, left for the caller to remove once its output is written, so a
        crash while saving still leaves the run resumable. ``resume``:
        ``never`` (start afresh), ``auto`` (continue from a checkpoint made by these very
        settings, inputs and model; any other is ignored with a notice) or ``require`` (as
        auto, but a missing, unreadable or mismatched checkpoint is an error).
        """
        run, weights = split_settings(run, weights, **overrides)
        return transfer(self.engine, content, styles, run, weights, masks=masks,
                        callback=callback, before_run=before_run, checkpoint=checkpoint,
                        resume=resume, keep_checkpoint=keep_checkpoint)

    def stylize(self, content, styles, run: RunOptions | None = None,
                weights: LossWeights | None = None, *, masks=None,
                callback: Callable[[Progress], None] | None = None,
                **overrides) -> Image.Image:
        """Content + style(s) → stylised PIL image; the arguments are :meth:`transfer`'s."""
        return self.transfer(content, styles, run, weights, masks=masks, callback=callback,
                             **overrides).image

    def fingerprint(self, images: list[Image.Image], run: RunOptions,
                    weights: LossWeights) -> str:
        """See :func:`~nst_onnx.job.fingerprint_images` (this model, this spec)."""
        return fingerprint_images(images, run, weights, self.spec,
                                  self.manifest["files"]["loss.onnx"]["sha256"])


def export(engine: EngineOptions | None = None, spec: LossSpec | None = None, *,
           rebuild: bool = False, guided: bool = False, log: Callable[[str], None] = print,
           **options) -> list[dict]:
    """Build the graphs (features; loss and gradient) and their manifests; with ``guided``
    also the masks loss; ``rebuild``: even where a current export exists. Returns each
    model's manifest with its ``dir``."""
    o, spec = split_engine(engine, spec, **options)
    out = []
    for g in ([False, True] if guided else [False]):
        d = model_for(o, dataclasses.replace(spec, guided=g), log, rebuild)
        out.append({"dir": str(d), **read_manifest(d)})
    return out
