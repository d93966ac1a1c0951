"""What every optimiser shares: the per-iteration ``Progress`` a callback sees, the
``OptimizeResult`` it returns, the best iterate it keeps, how a run's end becomes its stop
reason (``Ending``), and the hooks a run applies to its progress (``StopRule``,
``CheckpointTimer``).

Every optimiser keeps the best iterate seen and returns it, whatever ends the run: the
iteration budget, convergence, a failed line search (restarts from the best point a few
times first), a non-finite loss, the GPU's memory, or an interrupt (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..config import STOP_WINDOW
from ..errors import Finished, Interrupted, NstError
from ..graphs.interface import group_terms

MAX_RESTARTS = 3  # a failed line search restarts from the best point this often, then stops
LINE_SEARCH_FAILED = ("line search failed repeatedly (no further progress possible); kept the "
                      "best image")
BUDGET_REACHED = "iteration budget reached"


@dataclass
class Progress:
    """What a callback sees after each iteration. ``x`` is fetched on first access: a device
    optimiser's image stays on the device unless a callback asks for it."""

    iteration: int
    iterations: int
    evaluations: int
    loss: float
    terms: dict[str, float]
    seconds: float
    fetch: Callable[[], np.ndarray] = field(repr=False)
    state: Callable[[], Mapping[str, np.ndarray]] = field(default=lambda: {}, repr=False)
    """The optimiser's state beyond x, to resume it (fetched only when called)."""
    scale: int = 0  # a job's: the side (px) of the scale at hand (0: one problem's run)
    tiles: tuple[int, int] | None = None  # … and, when it is tiled, (tiles, their core px)

    @functools.cached_property
    def x(self) -> np.ndarray:
        """The current image, float64 (3, H, W); do not modify."""
        return self.fetch()

    @property
    def groups(self) -> dict[str, float]:
        """The terms summed per group: {'content': …, 'style': …, 'tv': …}."""
        return group_terms(self.terms)


Callback = Callable[[Progress], None]


class Lazy(Mapping):
    """A state whose arrays are fetched when read, each time: a checkpoint then brings a
    gigabyte history home one array at a time instead of all of it at once."""

    def __init__(self, **values):
        self.values = values  # an array, or a function that fetches it

    def __getitem__(self, key: str) -> np.ndarray:
        v = self.values[key]
        return v() if callable(v) else v

    def __iter__(self):
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


class Rows:
    """An (M, N) float32 array made of zero rows, then rows of ``source`` in the order
    given: a history kept as a ring, oldest first, without gathering it into a copy — a
    checkpoint writes it row by row (io.checkpoint); ``np.asarray`` gathers it."""

    def __init__(self, source: np.ndarray, order: list[int], total: int):
        self.source, self.order = source, list(order)
        self.shape = (total, source.shape[1])
        self.dtype = np.dtype(np.float32)

    def rows(self):
        zero = np.zeros(self.shape[1], self.dtype)
        for _ in range(self.shape[0] - len(self.order)):
            yield zero
        for k in self.order:
            yield np.ascontiguousarray(self.source[k], self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.zeros(self.shape, self.dtype)
        if self.order:
            np.take(self.source, self.order, axis=0, out=out[self.shape[0] - len(self.order):])
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, index):  # a resume from the in-memory state slices it
        return np.asarray(self)[index]


@dataclass
class OptimizeResult:
    x: np.ndarray
    loss: float
    terms: dict[str, float]
    initial_loss: float
    initial_terms: dict[str, float]
    iterations: int
    evaluations: int
    stop_reason: str
    seconds: float
    restarts: int = 0
    eval_seconds: float = 0.0  # inside the loss-and-gradient evaluations
    host_bytes: int = 0  # crossed between host arrays and the sessions (set by the caller)
    interrupted: Interrupted | None = field(default=None, repr=False)
    error: NstError | None = field(default=None, repr=False)  # stopped the run (e.g. GPU memory)
    gamma: float | None = None  # L-BFGS's last s·y/y·y: the next scale's first step (job.py)


class Best:
    """The best iterate seen: its loss, image, gradient and terms (any array type)."""

    def __init__(self):
        self.loss, self.x, self.g, self.terms = math.inf, None, None, {}

    def offer(self, loss: float, x, g, terms: dict[str, float]) -> None:
        if loss < self.loss:
            self.loss, self.x, self.g, self.terms = loss, x, g, terms


class Ending:
    """How a run ended: around (a part of) the loop, turns what stopped it into the reason in
    words and the interrupt or error to report; ``stopped`` says it caught one. The loop may
    set ``reason`` itself (convergence, a failed line search)."""

    def __init__(self):
        self.reason = BUDGET_REACHED
        self.interrupted: Interrupted | None = None
        self.error: NstError | None = None
        self.stopped = False

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb) -> bool:
        if isinstance(e, Interrupted):
            self.interrupted, self.reason = e, "interrupted"
        elif isinstance(e, Finished):
            self.reason = str(e)
        elif isinstance(e, (FloatingPointError, NstError)):
            self.reason = f"stopped: {e}; kept the best image"
            self.error = e if isinstance(e, NstError) else None
        else:
            return False
        self.stopped = True
        return True


class StopRule:
    """A progress hook that ends a run once its loss fell by less than ``tau`` (relative)
    over the last ``window`` iterations, by raising :class:`~nst_onnx.errors.Finished`
    (the optimisers return the best image with its message as the stop reason)."""

    def __init__(self, tau: float, window: int = STOP_WINDOW):
        self.tau, self.window = tau, window
        self.losses: list[float] = []

    def __call__(self, p: Progress) -> None:
        if not self.tau:
            return
        self.losses.append(p.loss)
        if len(self.losses) > self.window and \
                self.losses[-1 - self.window] - self.losses[-1] < self.tau * self.losses[-1]:
            raise Finished(f"finished: the loss fell by less than {self.tau:g} over the last "
                           f"{self.window} iterations")


class CheckpointTimer:
    """Says when ``every`` seconds of work have passed since the last checkpoint (0: never);
    one per job, so the clock runs on across its scales. At print sizes a checkpoint is
    gigabytes (the L-BFGS history): the wait grows to ``1 / SAVE_SHARE`` times what the last
    save took, so saving never costs more than that share of the run."""

    SAVE_SHARE = 0.05

    def __init__(self, every: float, clock: Callable[[], float] = time.perf_counter):
        self.every, self.clock = every, clock
        self.last, self.cost = clock(), 0.0

    def due(self) -> bool:
        wait = max(self.every, self.cost / self.SAVE_SHARE)
        if not (self.every > 0 and self.clock() - self.last >= wait):
            return False
        self.last = self.clock()
        return True

    def timed(self, save: Callable[[], None]) -> None:
        """Run ``save``; its time is not work, and sets the next wait."""
        start = self.clock()
        save()
        self.last = self.clock()
        self.cost = self.last - start


def chain(*hooks: Callback | None) -> Callback | None:
    """One callback calling each hook in turn (None ones skipped); None when none is left."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None

    def call(p: Progress) -> None:
        for h in live:
            h(p)
    return call
