"""The host optimiser: scipy's L-BFGS-B (``--optimizer lbfgs``) within [0, 255], the
reference the device optimisers (:mod:`.device_optim`) are measured against. What every
optimiser shares is in :mod:`.progress`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from ..config import HIGH, LOW
from ..errors import Interrupted
from .binding import Terms
from .progress import LINE_SEARCH_FAILED, MAX_RESTARTS, Callback, Ending, OptimizeResult, Progress


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
          history: int, callback: Callback | None = None) -> OptimizeResult:
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

    end = Ending()
    x = x0.ravel().astype(np.float64)
    while done < iterations:
        with end:
            res = minimize(fun, x, jac=True, method="L-BFGS-B", bounds=Bounds(LOW, HIGH),
                           callback=cb, options={"maxiter": iterations - done, "maxcor": history,
                                                 "ftol": 0.0, "gtol": 0.0,
                                                 "maxfun": max(2 * (iterations - done), 20),
                                                 "maxls": 40})
        if end.stopped:
            break
        msg = res.message if isinstance(res.message, str) else res.message.decode()
        if done >= iterations or res.nit >= iterations:
            break
        if "ABNORMAL" in msg.upper() and restarts < MAX_RESTARTS:
            restarts += 1  # line search failed: restart with a fresh history from the best point
            x = track.best_x.copy()
            continue
        end.reason = _explain(msg)
        break
    return OptimizeResult(_shaped(track, x0), track.best_loss, track.best_terms,
                          first.loss, first.terms, done, track.evaluations, end.reason,
                          time.perf_counter() - start, restarts, track.seconds,
                          interrupted=end.interrupted, error=end.error)


def _shaped(track: _Tracker, x0: np.ndarray) -> np.ndarray:
    x = track.best_x if track.best_x is not None else x0
    return np.clip(x.reshape(x0.shape), LOW, HIGH)


def _explain(msg: str) -> str:
    m = msg.upper()
    if "ABNORMAL" in m:
        return LINE_SEARCH_FAILED
    if "REL_REDUCTION_OF_F" in m or "PROJG" in m:
        return "converged"
    if "MAXFUN" in m or "TOTAL NO. OF F" in m:
        return "evaluation budget reached"
    if "ITERATIONS" in m or "MAXITER" in m:
        return "iteration budget reached"
    return msg.lower()
