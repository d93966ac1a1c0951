"""The host optimiser: scipy's L-BFGS-B (``--optimizer lbfgs``) within [0, 255], and what every
optimiser shares (``Progress``, ``OptimizeResult``). The device optimisers (``lbfgs-onnx``,
``adam``) are in :mod:`.device_optim`.

Every optimiser keeps the best iterate seen and returns it, whatever ends the run: the
iteration budget, convergence, a failed line search (restarts from the best point a few
times first), a non-finite loss, the GPU's memory, or an interrupt (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..config import HIGH, LOW
from ..errors import Finished, Interrupted, NstError
from ..graphs.interface import group_terms
from .binding import Terms

MAX_RESTARTS = 3


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
    state: Callable[[], dict[str, np.ndarray]] = field(default=lambda: {}, repr=False)
    """The optimiser's state beyond x, to resume it (fetched only when called)."""

    @functools.cached_property
    def x(self) -> np.ndarray:
        """The current image, float64 (3, H, W); do not modify."""
        return self.fetch()

    @property
    def groups(self) -> dict[str, float]:
        """The terms summed per group: {'content': …, 'style': …, 'tv': …}."""
        return group_terms(self.terms)


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


class _Tracker:
    """Wraps the evaluation: counts, keeps the best iterate, and the first one's loss."""

    def __init__(self, evaluate: Callable[[np.ndarray], Terms], shape):
        self.evaluate, self.shape = evaluate, shape
        self.evaluations = 0
        self.best_loss = math.inf
        self.best_x = None
        self.best_terms: dict[str, float] = {}
        self.first: Terms | None = None
        self.last: Terms | None = None
        self.seconds = 0.0  # inside evaluate

    def __call__(self, x: np.ndarray) -> Terms:
        start = time.perf_counter()
        t = self.evaluate(x.reshape(self.shape))
        self.seconds += time.perf_counter() - start
        self.evaluations += 1
        self.first = self.first or t
        self.last = t
        if not (math.isfinite(t.loss) and np.isfinite(t.grad).all()):
            raise FloatingPointError("the loss or its gradient is not finite")
        if t.loss < self.best_loss:
            self.best_loss, self.best_x, self.best_terms = t.loss, x.copy(), t.terms
        return t


def lbfgs(evaluate: Callable[[np.ndarray], Terms], x0: np.ndarray, iterations: int,
          history: int = 10, callback: Callable[[Progress], None] | None = None) -> OptimizeResult:
    """L-BFGS-B on the flattened image in float64, bounds [0, 255].

    ``evaluate`` takes a (3, H, W) float64 image. The loss is scaled internally so f starts
    near 1e3 (scipy's tests are relative, but O(1e12) values and float32 gradients mixed with
    float64 make it stop early); tolerances are zero so only true convergence stops it early.
    """
    from scipy.optimize import Bounds, minimize  # late: see nst_onnx.cli.main (BLAS threads)

    shape = x0.shape
    track = _Tracker(evaluate, shape)
    start = time.perf_counter()
    done = 0
    restarts = 0
    reason = "iteration budget reached"
    try:
        first = track(x0.ravel().astype(np.float64))
    except Interrupted as e:
        return OptimizeResult(x0.copy(), math.nan, {}, math.nan, {}, 0, track.evaluations,
                              "interrupted", time.perf_counter() - start, 0, track.seconds,
                              interrupted=e)
    scale = 1e3 / max(abs(first.loss), 1e-12)

    def fun(x):
        t = track(x)
        return t.loss * scale, t.grad.astype(np.float64).ravel() * scale

    def cb(xk):
        nonlocal done
        done += 1
        if callback:
            last = track.last
            callback(Progress(done, iterations, track.evaluations, last.loss, last.terms,
                              time.perf_counter() - start, lambda: xk.reshape(shape)))

    interrupted, error = None, None
    x = x0.ravel().astype(np.float64)
    while done < iterations:
        try:
            res = minimize(fun, x, jac=True, method="L-BFGS-B", bounds=Bounds(LOW, HIGH), callback=cb,
                           options={"maxiter": iterations - done, "maxcor": history,
                                    "ftol": 0.0, "gtol": 0.0,
                                    "maxfun": max(2 * (iterations - done), 20),
                                    "maxls": 40})
        except Interrupted as e:
            interrupted, reason = e, "interrupted"
            break
        except Finished as e:
            reason = str(e)
            break
        except (FloatingPointError, NstError) as e:
            reason = f"stopped: {e}; kept the best image"
            error = e if isinstance(e, NstError) else None
            break
        msg = res.message if isinstance(res.message, str) else res.message.decode()
        if done >= iterations or res.nit >= iterations:
            reason = "iteration budget reached"
            break
        if "ABNORMAL" in msg.upper() and restarts < MAX_RESTARTS:
            restarts += 1  # line search failed: restart with a fresh history from the best point
            x = track.best_x.copy()
            continue
        reason = _explain(msg)
        break
    return OptimizeResult(_shaped(track, x0), track.best_loss, track.best_terms,
                          first.loss, first.terms, done, track.evaluations, reason,
                          time.perf_counter() - start, restarts, track.seconds,
                          interrupted=interrupted, error=error)


def _shaped(track: _Tracker, x0: np.ndarray) -> np.ndarray:
    x = track.best_x if track.best_x is not None else x0
    return np.clip(x.reshape(x0.shape), LOW, HIGH)


def _explain(msg: str) -> str:
    m = msg.upper()
    if "ABNORMAL" in m:
        return "line search failed repeatedly (no further progress possible); kept the best image"
    if "REL_REDUCTION_OF_F" in m or "PROJG" in m:
        return "converged"
    if "MAXFUN" in m or "TOTAL NO. OF F" in m:
        return "evaluation budget reached"
    if "ITERATIONS" in m or "MAXITER" in m:
        return "iteration budget reached"
    return msg.lower()
