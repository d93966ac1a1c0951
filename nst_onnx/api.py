"""The public Python API: ``StyleTransfer`` → ``prepare`` a ``Problem`` → ``run`` / ``stylize``.

    st = StyleTransfer(device="cpu")            # finds or exports the model
    img = st.stylize("photo.jpg", "painting.jpg", size=512)

    problem = st.prepare("photo.jpg", ["a.jpg", "b.jpg"], size=256, style_blend=[0.7, 0.3])
    loss, grad = problem.loss_and_grad(x)       # x: float64 (H, W, 3), RGB in [0, 255]

Settings are the dataclasses of :mod:`nst_onnx.config` (``RunOptions``, ``LossWeights``,
``EngineOptions``, ``LossSpec``), or their fields as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
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
    MAX_PIXELS,
    STOP_WINDOW,
    EngineOptions,
    LossSpec,
    LossWeights,
    RunOptions,
    settings_dict,
    split_engine,
    split_settings,
)
from .errors import BadInput, Finished, Interrupted
from .graphs.export import export_model, read_manifest
from .graphs.interface import features_io, inv_sizes, loss_io
from .graphs.steps import STEP_GRAPHS
from .io import color
from .io.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .io.images import fit_longest_side, load_image, to_nchw, to_pil
from .run import resources
from .run.binding import DeviceGraph, Evaluator, Terms, Traffic
from .run.device_optim import Loop, adam_onnx, lbfgs_onnx
from .run.optimize import OptimizeResult, Progress, lbfgs
from .run.runtime import (
    make_session,
    out_of_memory_as,
    physical_cores,
    release_free_memory,
    resolve_device,
)


@dataclass
class Problem:
    """One content, its style targets and weights: the loss and its gradient at any image."""

    shape: tuple[int, int, int]  # (H, W, 3)
    content: np.ndarray  # float32 (1, 3, H, W), the resized content
    styles: list[np.ndarray]  # float32 (1, 3, h, w) each, as used for the targets
    evaluator: Evaluator
    weights: LossWeights
    manifest: dict  # of the model whose loss graph this problem runs
    content_rgb: np.ndarray | None = None  # the content in colour, when ``content`` is not

    @property
    def regions(self) -> int:
        """Mask regions (guided style loss), 0 without masks."""
        guides = self.evaluator.fixed.get("guides")
        return 0 if guides is None else guides.shape[0]

    def finish(self, x_chw: np.ndarray) -> np.ndarray:
        """The optimised image → the output: recombined with the content's chroma where the
        colour mode asks (luminance-only transfer, post-hoc chroma swap)."""
        if self.weights.preserve_colors not in ("luminance", "post"):
            return x_chw
        rgb = (self.content_rgb if self.content_rgb is not None else self.content)[0]
        y = color.luminance(x_chw.transpose(1, 2, 0))
        return color.with_chroma(y, rgb.transpose(1, 2, 0).astype(np.float64)).transpose(2, 0, 1)

    def evaluate(self, x_chw: np.ndarray) -> Terms:
        """Fast path: x as (3, H, W) or (1, 3, H, W), any float dtype."""
        return self.evaluator(x_chw.reshape(1, 3, *self.shape[:2]))

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """x: float64 (H, W, 3), RGB in [0, 255] → (loss, gradient of x's shape, float64)."""
        x = np.asarray(x)
        if x.shape != self.shape:
            raise BadInput(f"x has shape {x.shape}; this problem's shape is {self.shape}")
        t = self.evaluate(x.transpose(2, 0, 1))
        return t.loss, t.grad[0].transpose(1, 2, 0).astype(np.float64)

    def initial(self, init="content", seed: int = 0) -> np.ndarray:
        """Starting image (3, H, W) float64: 'content', 'noise', 'style', an image path, or
        an earlier result (3, h', w') to upscale (Lanczos)."""
        h, w = self.shape[:2]
        if isinstance(init, np.ndarray):
            if init.shape[1:] == (h, w):  # a checkpoint's image: exactly as it was
                return init.astype(np.float64)
            return to_nchw(to_pil(init[None]).resize((w, h), Image.LANCZOS))[0].astype(np.float64)
        if init == "content":
            return self.content[0].astype(np.float64)
        if init == "noise":
            return np.random.default_rng(seed).uniform(0, 255, (3, h, w))
        img = to_pil(self.styles[0]) if init == "style" else load_image(init, "init image")
        return to_nchw(img.resize((w, h), Image.LANCZOS))[0].astype(np.float64)


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

    def summary(self) -> dict:
        """Totals over all scales; initial loss of the first scale, final of the last."""
        o = self.optimize
        scales = self.scales or [_scale_summary(o)]
        before = self.resumed.get("iterations_before", 0)  # done by the run that stopped
        iterations = sum(s["iterations"] for s in scales) + before
        seconds = sum(s["seconds"] for s in scales)
        eval_seconds = sum(s["eval_seconds"] for s in scales)
        return {**self.engine, **self.model, "fingerprint": self.fingerprint,
                "settings": self.settings, "memory": self.memory,
                "iterations": iterations,
                "evaluations": sum(s["evaluations"] for s in scales),
                "initial_loss": scales[0]["initial_loss"],
                "initial_terms": scales[0]["initial_terms"],
                "final_loss": o.loss, "final_terms": o.terms, "seconds": seconds,
                "seconds_per_iteration": seconds / max(iterations - before, 1),
                "eval_seconds": eval_seconds, "optimizer_seconds": seconds - eval_seconds,
                "host_bytes_per_iteration":
                    sum(s["host_bytes"] for s in scales) / max(iterations - before, 1),
                "stop_reason": o.stop_reason, "restarts": o.restarts, "scales": self.scales,
                **({"resumed": self.resumed} if self.resumed else {})}


def fingerprint_images(images: list[Image.Image], run: RunOptions, weights: LossWeights,
                       spec: LossSpec, model_sha256: str) -> str:
    """SHA-256 of what decides a result: the settings, the decoded input pixels (content,
    styles, masks, and an init image's) and the model. Checkpoints and outputs carry it."""
    h = hashlib.sha256()
    settings = settings_dict(run, weights, spec)
    settings.pop("max_image_pixels", None)
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(model_sha256.encode())
    if isinstance(run.init, (str, os.PathLike)) and run.init not in ("content", "noise", "style"):
        images = [*images, load_image(run.init, "init image")]
    for img in images:
        h.update(f"{img.size}".encode())
        h.update(img.tobytes())
    return h.hexdigest()


def _scale_summary(o: OptimizeResult) -> dict:
    return {"iterations": o.iterations, "evaluations": o.evaluations, "seconds": o.seconds,
            "eval_seconds": o.eval_seconds, "host_bytes": o.host_bytes,
            "initial_loss": o.initial_loss, "initial_terms": o.initial_terms,
            "final_loss": o.loss, "stop_reason": o.stop_reason}


def _listed(x) -> list:
    """One image or a list/tuple of them → a list."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _hwc(x: np.ndarray) -> np.ndarray:
    return x[0].transpose(1, 2, 0).astype(np.float64)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def fit_content(img: Image.Image, side: int, min_side: int) -> Image.Image:
    """The content at ``side`` px (longest side), refused when a chosen layer would get no
    pixel: the message names the smallest size that works for this picture's aspect."""
    out = fit_longest_side(img, side)
    if min(out.size) >= min_side:
        return out
    need = max(side, min_side)
    while min(fit_longest_side(img, need).size) < min_side:
        need += 1
    raise BadInput(f"--size {side} is too small for this {img.size[0]}×{img.size[1]} content "
                   f"image ({out.size[0]}×{out.size[1]}): the chosen layers need ≥ {min_side} px "
                   f"on each side; use --size {need} or more")


class StyleTransfer:
    """Style transfer with one exported model on one device; reuse it for many images.

    ``StyleTransfer(device="cpu", threads=2, pooling="avg")``: keyword arguments are the
    fields of :class:`~nst_onnx.config.EngineOptions` and :class:`~nst_onnx.config.LossSpec`.
    """

    def __init__(self, engine: EngineOptions | None = None, spec: LossSpec | None = None, *,
                 log: Callable[[str], None] = print, **options):
        self.options, self.spec = split_engine(engine, spec, **options)
        self.options.validate()
        self.log = log
        self.device, notice = resolve_device(self.options.device, self.options.debug)
        if notice:
            log(f"note: {notice}")
        self.threads = self.options.threads or physical_cores()
        self._sessions: dict[LossSpec, tuple[dict, object]] = {}
        self._features_session = None
        self._step_sessions: dict | None = None
        self.model_dir = self._model(self.spec)[0]
        self.manifest = read_manifest(self.model_dir)
        self.providers: list[str] = []  # what the loss session actually runs on

    @property
    def threads_used(self) -> int:
        """The host threads a session runs with: CUDA sessions get one (run.runtime)."""
        return self.threads if self.device == "cpu" else 1

    def _session(self, path: Path, spinning: bool = True):
        o = self.options
        return make_session(path, self.device, self.threads, tf32=o.tf32,
                            gpu_mem_limit_mb=o.gpu_mem_limit_mb, debug=o.debug,
                            spinning=spinning)

    def _model(self, spec: LossSpec) -> tuple[Path, dict]:
        out = model_for(self.options, spec, self.log)
        return out, read_manifest(out)

    def _loss_session(self, guided: bool):
        """The loss session of this model (or its guided twin, exported on first use)."""
        spec = dataclasses.replace(self.spec, guided=guided)
        if spec not in self._sessions:
            model_dir, manifest = self._model(spec)
            session = self._session(model_dir / loss_io(spec).file)
            self.providers = session.get_providers()
            self._sessions[spec] = manifest, session
        return self._sessions[spec]

    def device_loop(self, problem: Problem) -> Loop:
        """The problem's loss graph and the optimiser's step graphs, bound on this device."""
        if self._step_sessions is None:
            self._step_sessions = {io().file.removesuffix(".onnx"):
                                   (io(), self._session(self.model_dir / io().file,
                                                        spinning=False))
                                   for io, _ in STEP_GRAPHS}
        traffic = Traffic()
        ev = problem.evaluator
        steps = {name: DeviceGraph(session, io, self.device, traffic)
                 for name, (io, session) in self._step_sessions.items()}
        return Loop(DeviceGraph(ev.session, ev.io, self.device, traffic, ev.fixed), steps,
                    self.device, traffic, (1, 3, *problem.shape[:2]))

    @property
    def min_size(self) -> int:
        return self.spec.min_side

    def features(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """(1, 3, H, W) float32 images → [{'features_relu4_2': …, 'gram_relu1_1': …}, …].

        On the CPU the features session lives only for this call: targets are computed once
        per problem, and its weights (~60 MB) would otherwise sit beside the loss session's.
        On a GPU it is kept: building a CUDA session (weight upload, cuDNN algorithm search)
        costs more than its memory, and coarse-to-fine needs it at every scale.
        """
        session = self._features_session or self._session(
            self.model_dir / features_io(self.spec).file)
        names = features_io(self.spec).names("outputs")
        with out_of_memory_as(self.device, "the GPU ran out of memory computing the targets: "
                              "use a smaller --size or style image, or raise --gpu-mem-limit"):
            out = [dict(zip(names, session.run(names, {"image": x}))) for x in images]
        if self.device == "cuda":
            self._features_session = session
        else:
            del session
            release_free_memory()
        return out

    def prepare(self, content, styles, size: int = RunOptions.size, *, masks=None,
                weights: LossWeights | None = None,
                max_image_pixels: int | None = MAX_PIXELS, **weight_overrides) -> Problem:
        """Load and resize the images, compute the targets once, and bind them.

        ``weights`` / ``weight_overrides``: :class:`~nst_onnx.config.LossWeights` (or its
        fields). ``max_image_pixels``: refuse image files whose header claims more (None:
        no limit). ``masks``: one greyscale image per style, drawn over the content (white:
        this style, black: not it; grey blends): spatial control by guided Gram matrices.
        """
        lw = dataclasses.replace(weights or LossWeights(), **weight_overrides)
        styles = _listed(styles)
        if not styles:
            raise BadInput("give at least one style image")
        lw.validate(len(styles), len(self.spec.style_layers))
        content_img = fit_content(
            load_image(content, "content image", max_image_pixels, self.log), size,
            self.min_size)
        style_side = max(self.min_size, round(size * lw.style_scale))
        style_arrays = []
        for i, s in enumerate(styles):
            img = fit_longest_side(
                load_image(s, f"style image {i + 1}", max_image_pixels, self.log), style_side)
            if min(img.size) < self.min_size:
                raise BadInput(f"style image {i + 1} is too narrow at this size "
                               f"({img.size[0]}×{img.size[1]}); raise --size or --style-scale")
            style_arrays.append(to_nchw(img))
        x_content, content_rgb, style_arrays = _colour_mode(lw.preserve_colors,
                                                            to_nchw(content_img), style_arrays)
        guides = None if masks is None else self._guides(masks, len(styles), content_img.size,
                                                         lw, max_image_pixels)
        content_feats, *style_feats = self.features([x_content, *style_arrays])
        spec = dataclasses.replace(self.spec, guided=guides is not None)
        fixed = {f"target_{n}": content_feats[f"features_{n}"] for n in spec.content_layers}
        blend = np.asarray(lw.style_blend if lw.style_blend is not None else [1.0] * len(styles),
                           np.float64)
        blend = blend / blend.sum()
        for n in spec.style_layers:
            per_style = [f[f"gram_{n}"] for f in style_feats]
            fixed[f"target_gram_{n}"] = (  # masks: one target per region, (R, C, C)
                np.stack(per_style) if guides is not None
                else sum(b * g.astype(np.float64) for b, g in zip(blend, per_style)))
        if guides is not None:
            fixed["guides"] = guides
        layer_w = np.asarray(lw.style_layer_weights if lw.style_layer_weights is not None
                             else [1.0] * len(spec.style_layers), np.float64)
        h, w = x_content.shape[2:]
        fixed["content_weights"] = np.full(len(spec.content_layers), lw.content_weight)
        fixed["style_weights"] = lw.style_weight * layer_w
        fixed["tv_weight"] = np.asarray(lw.tv_weight_at(h, w))
        fixed["inv_sizes"] = inv_sizes(spec, h, w)
        manifest, session = self._loss_session(spec.guided)
        return Problem((h, w, 3), x_content, style_arrays,
                       Evaluator(session, loss_io(spec), fixed, self.device), lw, manifest,
                       content_rgb)

    def _guides(self, masks, n_styles: int, size: tuple[int, int], lw: LossWeights,
                max_image_pixels: int | None) -> np.ndarray:
        """Masks → (R, 1, H, W) float32 guides in [0, 1] at the content's size."""
        masks = _listed(masks)
        if len(masks) != n_styles:
            raise BadInput(f"{len(masks)} masks for {n_styles} style images: give one per style")
        if lw.style_blend is not None:
            raise BadInput("--style-blend does not apply with --masks: each style has its region")
        out = []
        for i, m in enumerate(masks, start=1):
            img = load_image(m, f"mask {i}", max_image_pixels, self.log)
            if abs(img.size[0] / img.size[1] - size[0] / size[1]) > 0.02 * size[0] / size[1]:
                raise BadInput(f"mask {i} is {img.size[0]}×{img.size[1]}, the content "
                               f"{size[0]}×{size[1]}: draw masks over the content image")
            g = np.asarray(img.convert("L").resize(size, Image.BILINEAR), np.float32) / 255
            if g.mean() < 1e-3:
                raise BadInput(f"mask {i} is black: it gives its style no region")
            out.append(g)
        return np.stack(out)[:, None]

    def check_memory(self, problem: Problem, final_size: int, run: RunOptions) -> dict:
        """Estimate the run's peak memory at its final size — host memory on the CPU, device
        memory on a GPU — and refuse (BadInput) when it will not fit, unless ``run.force``.
        Returns what was estimated."""
        h, w = problem.shape[:2]
        grow = (final_size / max(h, w)) ** 2
        aspect = min(h, w) / max(h, w)
        if self.device == "cuda":
            fh, fw = round(h * grow ** 0.5), round(w * grow ** 0.5)
            spec = dataclasses.replace(self.spec, guided=problem.regions > 0)
            state = resources.device_state_images(run.optimizer, run.history)
            est = resources.estimate_gpu_mb(spec, fh, fw, problem.regions, state)
            mem = resources.gpu_memory_mb()
            avail = None if mem is None else mem[0]
            what = "GPU memory"

            def largest(budget):
                return resources.gpu_largest_side(spec, budget, aspect, problem.regions,
                                                  state)
            info = {"pixels": fh * fw, "estimated_gpu_mb": round(est), "gpu_free_mb":
                    None if avail is None else round(avail), "estimate": "calibrated on an H200",
                    "device": self.device}
        else:
            style_px = max(s.shape[2] * s.shape[3] for s in problem.styles)
            mpx = max(h * w, style_px) * grow / 1e6
            est = resources.estimate_peak_mb(mpx, run.history, problem.regions, run.optimizer)
            avail = resources.available_mb()
            what = "memory"

            def largest(budget):
                return resources.largest_side(budget, aspect, run.history, problem.regions,
                                              run.optimizer)
            info = {"megapixels": round(mpx, 4), "estimated_peak_mb": round(est),
                    "available_mb": None if avail is None else round(avail),
                    "device": self.device}
        if avail is not None and est > resources.HEADROOM * avail:
            side = largest(resources.HEADROOM * avail)
            advice = (f"use --size {side} or less" if side >= 16 else
                      f"too little for any size: free some {what}")
            msg = (f"this run needs about {est / 1024:.1f} GB of {what} and {avail / 1024:.1f} "
                   f"GB is free: {advice}, or pass --force")
            if not run.force:
                raise BadInput(msg)
            self.log(f"warning: {msg} (--force given)")
        return info

    def run(self, problem: Problem, run: RunOptions | None = None,
            callback: Callable[[Progress], None] | None = None,
            state: dict[str, np.ndarray] | None = None, **overrides) -> Result:
        """Optimise the image at the problem's size; returns the best iterate seen, whatever
        stopped the run. ``run`` / ``overrides``: :class:`~nst_onnx.config.RunOptions`;
        ``state``: a device optimiser's state to resume (``Progress.state()``)."""
        run = dataclasses.replace(run or RunOptions(), **overrides)
        run.validate()
        iterations = run.iterations if isinstance(run.iterations, int) else DEFAULT_ITERATIONS
        x0 = problem.initial(run.init, run.seed)
        if run.optimizer == "lbfgs":
            bytes_before = problem.evaluator.host_bytes
            res = lbfgs(problem.evaluate, x0, iterations, run.history, callback)
            res.host_bytes = problem.evaluator.host_bytes - bytes_before
        elif run.optimizer == "lbfgs-onnx":
            res = lbfgs_onnx(self.device_loop(problem), x0, iterations, run.history, callback,
                             state)
        else:
            res = adam_onnx(self.device_loop(problem), x0, iterations, run.lr, callback, state)
        settings = settings_dict(dataclasses.replace(run, size=max(problem.shape[:2]),
                                                     iterations=iterations),
                                 problem.weights, self.spec)
        return Result(to_pil(problem.finish(res.x)[None]), res, settings,
                      model={"model": problem.manifest["key"],
                             "model_sha256": problem.manifest["files"]["loss.onnx"]["sha256"]},
                      engine={"device": self.device, "providers": self.providers,
                              "threads": self.threads_used,
                              "tf32": self.options.tf32 if self.device == "cuda" else None})

    def transfer(self, content, styles, run: RunOptions | None = None,
                 weights: LossWeights | None = None, *, masks=None,
                 callback: Callable[[Progress], None] | None = None,
                 before_run: Callable[[Problem, list[int], list[int]], None] | None = None,
                 checkpoint: str | os.PathLike | None = None, checkpoint_every: float = 60.0,
                 resume: str = "never", **overrides) -> Result:
        """The whole job: coarse-to-fine over the sizes of :func:`plan_scales`, each scale
        started from the previous result upscaled (Lanczos), targets recomputed per scale;
        the memory estimate is checked before the first.

        ``run``, ``weights`` or ``overrides``: :class:`~nst_onnx.config.RunOptions` and
        :class:`~nst_onnx.config.LossWeights` (or their fields). ``masks``: see
        :meth:`prepare`. ``before_run(problem, sizes, iterations)`` is called once the first
        scale is prepared, before any optimisation. Returns the final scale's result; its
        summary counts iterations, evaluations and seconds over all scales.

        ``checkpoint``: a file (:func:`~nst_onnx.io.checkpoint.checkpoint_path` of the
        output) that keeps where the run stands, written every ``checkpoint_every`` seconds
        of work and when interrupted, removed when the run succeeds. ``resume``: ``never``
        (start afresh), ``auto`` (continue from a checkpoint made by these very settings,
        inputs and model; any other is ignored with a notice) or ``require`` (as auto, but a
        missing, unreadable or mismatched checkpoint is an error).
        """
        run, weights = split_settings(run, weights, **overrides)
        run.validate()
        if resume not in ("never", "auto", "require"):
            raise ValueError(f"resume={resume!r}: never, auto or require")
        pixels = run.max_image_pixels
        # decode the files once, not once per scale
        content = load_image(content, "content image", pixels, self.log)
        styles = [load_image(s, f"style image {i + 1}", pixels, self.log)
                  for i, s in enumerate(_listed(styles))]
        if masks is not None:
            masks = [load_image(m, f"mask {i + 1}", pixels, self.log)
                     for i, m in enumerate(_listed(masks))]
        sizes, its = plan_scales(run.size, run.scales, run.iterations)
        fit_content(content, sizes[0], self.min_size)
        fp = self.fingerprint([content, *styles, *(masks or [])], run, weights)
        ckpt = self._resume(checkpoint, fp, resume, run, its)
        total, done, per_scale, start = sum(its), 0, [], run.init
        tau = run.stop_rule()
        result, memory, latest = None, {}, {}
        last_save = time.perf_counter()

        def save_checkpoint(p: Progress, index: int, iteration: int, done_total: int) -> None:
            if checkpoint is not None and iteration < its[index]:
                Checkpoint(fp, index, iteration, done_total, run.optimizer, p.x,
                           p.state()).save(Path(checkpoint))

        for index, (side, n) in enumerate(zip(sizes, its)):
            here = ckpt is not None and index == ckpt.scale
            if ckpt is not None and index < ckpt.scale:
                done += n
                continue
            first = ckpt.iteration if here else 0
            try:
                problem = self.prepare(content, styles, side, masks=masks, weights=weights,
                                       max_image_pixels=pixels)
            except Interrupted as e:
                if result is None:
                    raise
                result.optimize.interrupted = e  # keep the previous scale's image
                break
            if here and ckpt.x.shape[1:] != problem.shape[:2]:
                raise CheckpointError(f"checkpoint {checkpoint} does not fit this run's sizes")
            if not memory:
                memory = self.check_memory(problem, sizes[-1], run)
                if before_run:
                    before_run(problem, sizes, its)

            losses: list[float] = []

            def shifted(p: Progress, offset=done + first, problem=problem, index=index,
                        first=first, losses=losses) -> None:
                nonlocal last_save
                latest.update(p=p, index=index, iteration=first + p.iteration,
                              done=offset + p.iteration)
                losses.append(p.loss)
                if time.perf_counter() - last_save >= checkpoint_every > 0:
                    save_checkpoint(p, index, first + p.iteration, offset + p.iteration)
                    last_save = time.perf_counter()
                if callback:  # x as the output will look (chroma recombined where asked)
                    callback(dataclasses.replace(p, iteration=offset + p.iteration,
                                                 iterations=total,
                                                 fetch=lambda: problem.finish(p.x)))
                if tau and len(losses) > STOP_WINDOW and \
                        losses[-1 - STOP_WINDOW] - losses[-1] < tau * losses[-1]:
                    raise Finished(f"finished: the loss fell by less than {tau:g} over the "
                                   f"last {STOP_WINDOW} iterations")

            state = ckpt.state if here and ckpt.optimizer == run.optimizer else None
            result = self.run(problem, dataclasses.replace(
                run, iterations=n - first, init=ckpt.x if here else start), shifted,
                state=state)
            o = result.optimize
            per_scale.append({"size": side, "shape": list(problem.shape[:2]),
                              **_scale_summary(o), **({"resumed_at": first} if here else {})})
            done += n
            start = o.x
            if o.interrupted is not None or o.error is not None:
                if latest and checkpoint is not None:  # resume where it stopped
                    save_checkpoint(latest["p"], latest["index"], latest["iteration"],
                                    latest["done"])
                break
        else:
            if checkpoint is not None:
                Path(checkpoint).unlink(missing_ok=True)
        result.settings.update(settings_dict(run, weights, self.spec), size=sizes[-1],
                               scales=sizes, iterations=its)
        result.scales, result.memory, result.fingerprint = per_scale, memory, fp
        result.resumed = {"checkpoint": str(checkpoint), "iterations_before": ckpt.done} \
            if ckpt is not None else {}
        return result

    def fingerprint(self, images: list[Image.Image], run: RunOptions,
                    weights: LossWeights) -> str:
        """See :func:`fingerprint_images` (this model, this spec)."""
        return fingerprint_images(images, run, weights, self.spec,
                                  self.manifest["files"]["loss.onnx"]["sha256"])

    def _resume(self, checkpoint, fp: str, resume: str, run: RunOptions,
                its: list[int]) -> Checkpoint | None:
        if checkpoint is None or resume == "never":
            return None
        path = Path(checkpoint)
        try:
            if not path.exists():
                raise CheckpointError(f"no checkpoint at {path}: nothing to resume")
            ckpt = load_checkpoint(path, fp)
            if not (ckpt.scale < len(its) and 0 <= ckpt.iteration < its[ckpt.scale]):
                raise CheckpointError(f"checkpoint {path} does not fit this run's plan")
            return ckpt
        except CheckpointError as e:
            if resume == "require":
                raise
            if path.exists():
                self.log(f"note: {e}; starting afresh")
            return None

    def stylize(self, content, styles, run: RunOptions | None = None,
                weights: LossWeights | None = None, *, masks=None,
                callback: Callable[[Progress], None] | None = None, **overrides) -> Image.Image:
        """Content + style(s) → stylised PIL image; the arguments are :meth:`transfer`'s."""
        return self.transfer(content, styles, run, weights, masks=masks, callback=callback,
                             **overrides).image


def _colour_mode(mode: str, content: np.ndarray, styles: list[np.ndarray]):
    """(content as optimised, content in colour or None, styles) for a --preserve-colors mode."""
    if mode == "luminance":  # optimise luminance only; chroma comes back in Problem.finish
        cy = color.luminance(_hwc(content))
        grey_styles = [_nchw(color.grey(color.match_luminance(color.luminance(_hwc(s)), cy)))
                       for s in styles]
        return _nchw(color.grey(cy)), content, grey_styles
    if mode in ("histogram", "histogram-sym"):
        method = "cholesky" if mode == "histogram" else "symmetric"
        return content, None, [_nchw(color.match_histogram(_hwc(s), _hwc(content), method))
                               for s in styles]
    return content, None, styles


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
    if scales is None:
        sizes = [size]
        while size >= AUTO_MULTISCALE_FROM and sizes[0] // 2 >= COARSEST:
            sizes.insert(0, sizes[0] // 2)
    elif isinstance(scales, int):
        if scales < 1:
            raise BadInput("--scales must be ≥ 1")
        sizes = sorted({max(1, round(size / 2 ** k)) for k in range(scales)})
    else:
        sizes = [int(v) for v in scales]
        if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise BadInput("--scales must be increasing sizes, e.g. 256,512,1024")
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


def model_for(engine: EngineOptions, spec: LossSpec, log: Callable[[str], None] = print,
              force: bool = False) -> Path:
    """The model directory for ``spec`` (exported there first if missing, stale, or built
    from other weights than ``engine.weights``), from the engine's models folder and cache."""
    return export_model(spec, Path(engine.models_dir) if engine.models_dir else None,
                        weights_path=engine.weights, force=force, log=log,
                        cache_dir=Path(engine.cache_dir) if engine.cache_dir else None)


def export(engine: EngineOptions | None = None, spec: LossSpec | None = None, *,
           force: bool = False, guided: bool = False, log: Callable[[str], None] = print,
           **options) -> list[dict]:
    """Build the graphs (features; loss and gradient) and their manifests; with ``guided``
    also the masks loss. Returns each model's manifest with its ``dir``."""
    o, spec = split_engine(engine, spec, **options)
    out = []
    for g in ([False, True] if guided else [False]):
        d = model_for(o, dataclasses.replace(spec, guided=g), log, force)
        out.append({"dir": str(d), **read_manifest(d)})
    return out


def _profile(st: StyleTransfer, problem: Problem, x: np.ndarray, repeats: int) -> dict:
    """Milliseconds per evaluation by op type, from onnxruntime's profiler (written to a
    temporary folder, never the current one); convolutions against everything else."""
    import tempfile

    ev = problem.evaluator
    model = st.model_dir / loss_io(st.spec).file
    with tempfile.TemporaryDirectory(prefix="nst-profile-") as tmp:
        session = make_session(model, st.device, st.threads, tf32=st.options.tf32,
                               profile_prefix=str(Path(tmp) / "loss"))
        feed = {"image": np.ascontiguousarray(x[None], np.float32), **ev.fixed}
        session.run(None, feed)  # warm-up, not counted
        for _ in range(repeats):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    warm_end = None
    for e in events:  # skip the warm-up run: the first "model_run" event
        if e.get("name") == "model_run":
            warm_end = warm_end or e["ts"] + e["dur"]
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") \
                and (warm_end is None or e["ts"] > warm_end):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000 / repeats
    total = sum(per_op.values())
    conv = sum(v for k, v in per_op.items() if k in ("Conv", "FusedConv", "NchwcConv"))
    return {"total_ms": total, "conv_ms": conv, "other_ms": total - conv,
            "other_share": (total - conv) / total if total else 0.0,
            "by_op_ms": dict(sorted(per_op.items(), key=lambda kv: -kv[1]))}


def system_info(models_dir=None, cache_dir=None) -> dict:
    """What ``nst info`` shows: versions, providers, cores, exported models, memory."""
    import json
    import sys

    import onnxruntime as ort

    from . import __version__
    from .graphs.export import default_models_dir
    from .graphs.weights import default_cache_dir

    mdir = Path(models_dir) if models_dir else default_models_dir()
    found = []
    for m in sorted(mdir.glob("*/manifest.json")) if mdir.is_dir() else []:
        try:
            d = json.loads(m.read_text())
            found.append({"dir": str(m.parent), "key": d.get("key"), "format": d.get("format"),
                          "weights": d.get("weights", {}).get("kind"),
                          "bytes": sum(f["bytes"] for f in d.get("files", {}).values())})
        except (OSError, ValueError):
            found.append({"dir": str(m.parent), "error": "unreadable manifest"})
    from .run.runtime import cuda_problem, installed_runtimes, runtime_clash

    providers = ort.get_available_providers()
    problem = cuda_problem()
    gpu = resources.gpu_memory_mb()
    return {"nst_onnx": __version__, "python": sys.version.split()[0],
            "onnxruntime": ort.__version__, "onnxruntime_packages": installed_runtimes(),
            "runtime_clash": runtime_clash(), "providers": providers,
            "device_auto": "cpu" if problem else "cuda", "cuda": problem or "usable",
            "gpu_memory_mb": None if gpu is None else {"free": round(gpu[0]),
                                                        "total": round(gpu[1])},
            "physical_cores": physical_cores(), "models_dir": str(mdir), "models": found,
            "cache_dir": str(Path(cache_dir) if cache_dir else default_cache_dir()),
            "memory_available_mb": round(resources.available_mb() or 0),
            "memory_estimate_mb": {f"{s}x{s * 3 // 4}":
                                   round(resources.estimate_peak_mb(s * s * 0.75e-6))
                                   for s in (512, 1024, 2048)}}


def bench(st: StyleTransfer, sizes: list[int], repeats: int = 5, profile: bool = False) -> dict:
    """Time one loss+gradient evaluation per square size (median after a warm-up); with
    ``profile``, also where one evaluation's time goes, per op type (onnxruntime's profiler,
    on a separate session of the same graph)."""
    import statistics

    from .graphs.networks import loss_flops

    if repeats < 1:
        raise BadInput("--repeats must be ≥ 1")
    if profile and st.device == "cuda":  # seen on an H200: 3.4 ms "total" for a 14.6 ms run
        raise BadInput("--profile splits CPU kernel time; on CUDA onnxruntime's profiler "
                       "records kernel launches, not GPU time (use Nsight Systems there)")
    rows = []
    for size in sizes:
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
        if profile:
            rows[-1]["profile"] = _profile(st, problem, x, repeats)
    return {"device": st.device, "providers": st.providers,
            "threads": st.threads_used,
            "tf32": st.options.tf32, "model": st.manifest["key"],
            "peak_rss_mb": resources.peak_rss_mb(), "results": rows}
