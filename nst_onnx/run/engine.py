"""One exported model on one device: its sessions (features, loss per guided flag, the
optimiser's step graphs), made on first use and kept, and the device loop of a problem.

The model directory of each :class:`~nst_onnx.config.LossSpec` is found (or exported) and
its manifest checked against the files' SHA-256s once per engine, however many problems
and scales it serves.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import EngineOptions, LossSpec
from ..graphs.export import export_model, read_manifest
from ..graphs.interface import features_io, loss_io, window_features_io, window_loss_io
from ..graphs.steps import STEP_GRAPHS
from ..graphs.windows import WINDOW_MOVES
from .binding import DeviceGraph, Evaluator, Traffic
from .cuda import out_of_memory_as
from .device_optim import Loop
from .devices import resolve_device
from .sessions import make_session, physical_cores, release_free_memory, shrinking


def model_for(engine: EngineOptions, spec: LossSpec, log: Callable[[str], None] = print,
              rebuild: bool = False) -> Path:
    """The model directory for ``spec`` (exported there first if missing, stale, or built
    from other weights than ``engine.weights``), from the engine's models folder and cache."""
    return export_model(spec, Path(engine.models_dir) if engine.models_dir else None,
                        weights_path=engine.weights, force=rebuild, log=log,
                        cache_dir=Path(engine.cache_dir) if engine.cache_dir else None)


class Engine:
    """Sessions of one model on one device; ``device`` is what ``options.device`` resolved to
    (``auto`` → cuda only where CUDA really loads, with a notice otherwise)."""

    def __init__(self, options: EngineOptions, spec: LossSpec,
                 log: Callable[[str], None] = print):
        options.validate()
        self.options, self.spec, self.log = options, spec, log
        self.device, notice = resolve_device(options.device, options.debug)
        if notice:
            log(f"note: {notice}")
        self.threads = options.threads or physical_cores()
        cpus = os.cpu_count() or 1
        if self.threads > cpus:  # thousands of threads only thrash (and ignore SIGTERM)
            log(f"note: --threads {self.threads} is more than the {cpus} CPUs here: using {cpus}")
            self.threads = cpus
        self._models: dict[LossSpec, tuple[Path, dict]] = {}
        self._loss_sessions: dict[tuple[LossSpec, bool], object] = {}
        self._features_session = None
        self._window_sessions: dict[bool, tuple] = {}
        self._step_sessions: dict | None = None
        self._window_moves: dict | None = None
        self.model_dir, self.manifest = self.model(spec)
        self.providers: list[str] = []  # what the loss session actually runs on

    @property
    def threads_used(self) -> int:
        """The host threads a session runs with: CUDA sessions get one (run.sessions)."""
        return self.threads if self.device == "cpu" else 1

    def model(self, spec: LossSpec) -> tuple[Path, dict]:
        """(model directory, checked manifest) for ``spec``, found or exported once."""
        if spec not in self._models:
            model_dir = model_for(self.options, spec, self.log)
            self._models[spec] = model_dir, read_manifest(model_dir)
        return self._models[spec]

    def session(self, path: Path, spinning: bool = True, profile_prefix: str | None = None):
        o = self.options
        return make_session(path, self.device, self.threads, tf32=o.tf32,
                            gpu_mem_limit_mb=o.gpu_mem_limit_mb, debug=o.debug,
                            spinning=spinning, profile_prefix=profile_prefix)

    def loss_session(self, guided: bool, temporal: bool = False) -> tuple[dict, object]:
        """(manifest, session) of this model's loss graph, or its guided twin (exported on
        first use); ``temporal``: the video's variant of either."""
        spec = dataclasses.replace(self.spec, guided=guided)
        model_dir, manifest = self.model(spec)
        if (spec, temporal) not in self._loss_sessions:
            session = self.session(model_dir / loss_io(spec, temporal).file)
            self.providers = session.get_providers()
            self._loss_sessions[spec, temporal] = session
        return manifest, self._loss_sessions[spec, temporal]

    def window_sessions(self, guided: bool = False) -> tuple[object, object]:
        """(window-features, window-loss) sessions of this model or its guided twin (tiled
        evaluation), kept."""
        if guided not in self._window_sessions:
            spec = dataclasses.replace(self.spec, guided=guided)
            model_dir, _ = self.model(spec)
            self._window_sessions[guided] = tuple(self.session(model_dir / io(spec).file)
                                                  for io in (window_features_io, window_loss_io))
        return self._window_sessions[guided]

    def window_moves(self) -> dict[str, tuple]:
        """{name: (interface, session)} of the weightless graphs of a tiled evaluation
        (graphs/windows.py): cutting windows and adding their gradients on the device (a
        GPU's), and a video frame's temporal term on the whole image (any device), kept."""
        if self._window_moves is None:
            self._window_moves = {name: (io(), self.session(self.model_dir / io().file,
                                                            spinning=False))
                                  for name, (io, _) in WINDOW_MOVES.items()}
        return self._window_moves

    def features(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """(1, 3, H, W) float32 images → [{'features_relu4_2': …, 'gram_relu1_1': …}, …].

        On the CPU the features session lives only for this call: targets are computed once
        per problem, and its weights would otherwise sit beside the loss session's. On a GPU
        it is kept: building a CUDA session (weight upload, cuDNN algorithm search) costs
        more than its memory, and coarse-to-fine needs it at every scale.
        """
        session = self._features_session or self.session(
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

    def device_loop(self, evaluator: Evaluator, shape: tuple[int, int]) -> Loop:
        """The loss graph (bound to ``evaluator``'s fixed inputs, on the device already) and
        the optimiser's step graphs, for an image of ``shape`` (H, W)."""
        if self._step_sessions is None:
            self._step_sessions = {
                name: (io(), self.session(self.model_dir / io().file, spinning=False))
                for name, (io, _) in STEP_GRAPHS.items()}
        traffic = Traffic()
        steps = {name: DeviceGraph(session, io, self.device, traffic,
                                   run_options=shrinking(self.device))
                 for name, (io, session) in self._step_sessions.items()}
        loss = evaluator.device_graph(self.device, traffic)
        return Loop(loss, steps, self.device, traffic, (1, 3, *shape))
