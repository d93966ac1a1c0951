"""Optimisers whose vector work runs as ONNX step graphs (:mod:`nst_onnx.graphs.steps`) on
the loss graph's device; the image, gradient, history and moments stay in OrtValues there,
and the host sees only scalars — unless a callback asks for the image.

``lbfgs_onnx``: projected L-BFGS on the box, in the compact form of Byrd, Nocedal & Schnabel
(1994). Per iteration: the free-variable gradient and its dot products with the history
(one graph), the 2m coefficients solved on the host in float64 from m×m matrices it keeps
up to date, the direction (one graph), then a backtracking Armijo line search along the
projected path ``clip(x + t·d)`` (one graph and one evaluation per trial; the first trial,
t = 1, is accepted almost always), and the history update (one graph). Why Armijo and not
strong Wolfe: along a projected path the derivative jumps where a bound becomes active, so
the curvature condition has no clean meaning there; pairs that fail ``s·y > 0`` are skipped
instead, which keeps the inverse Hessian positive definite, so ``d`` is always a descent
direction on the free variables. The curvature test is still used the other way round, to
grow a step that was too short (×4, as MINPACK's line search in scipy's L-BFGS-B does):
from the content image the first unit-length step and the first pairs badly underestimate
the scale, and without this the first iterations crawl (docs/design.md has the
measurement). A line search that fails restarts from the best point with an empty history
(as the scipy driver does), three times at most.

``adam_onnx``: Adam in pixel units with the same projection, one step graph per iteration.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
from scipy.linalg import solve_triangular

from ..config import ADAM_MOMENTS
from ..errors import Interrupted
from ..graphs.steps import ADAM_STEP, CURVATURE, LBFGS_DIRECTION, LBFGS_PROJECT, LBFGS_UPDATE, PROJECT_STEP
from .binding import DeviceGraph, Traffic, to_device, to_host
from .progress import (
    LINE_SEARCH_FAILED,
    MAX_RESTARTS,
    Best,
    Callback,
    Ending,
    Lazy,
    OptimizeResult,
    Progress,
)

ARMIJO = 1e-4
WOLFE = 0.9  # curvature: a step is long enough once the slope has eased to 0.9× its start
EXTRAPOLATE = 4.0  # as MINPACK's line search (scipy's L-BFGS-B) grows a too-short step
MAX_STEP = 1e10
MAX_TRIALS = 20
CURVATURE_FLOOR = 1e-10  # a pair is kept when s·y > CURVATURE · y·y


class Loop:
    """The loss graph and the step graphs of one problem, on one device, sharing a traffic
    counter; ``loss(x)`` → (loss, terms, gradient OrtValue)."""

    def __init__(self, loss: DeviceGraph, steps: dict[str, DeviceGraph], device: str,
                 traffic: Traffic, shape: tuple[int, ...]):
        self.loss_graph, self.steps, self.device = loss, steps, device
        self.traffic, self.shape = traffic, shape
        self.evaluations = 0

    def loss(self, x):
        out = self.loss_graph(image=x)
        self.evaluations += 1
        terms = {k: float(out[k]) for k in self.loss_graph.io.names("outputs", "term")}
        return float(out["loss"]), terms, out["grad"]

    def upload(self, x: np.ndarray):
        arr = np.ascontiguousarray(x.reshape(self.shape), np.float32)
        self.traffic.bytes += arr.nbytes
        return to_device(arr, self.device)

    def fetch(self, value) -> np.ndarray:
        return to_host(value, self.traffic)[0].astype(np.float64)

    @property
    def eval_seconds(self) -> float:
        return self.loss_graph.seconds


def _result(loop: Loop, x0: np.ndarray, best: Best, first: tuple[float, dict], done: int,
            end: Ending, start: float, restarts: int, loop_bytes: int) -> OptimizeResult:
    """Bring the best image home once; ``host_bytes`` counts the loop only (per iteration)."""
    x = loop.fetch(best.x) if best.x is not None else x0.copy()
    res = OptimizeResult(x, best.loss, best.terms, first[0], first[1], done, loop.evaluations,
                         end.reason, time.perf_counter() - start, restarts, loop.eval_seconds,
                         interrupted=end.interrupted, error=end.error)
    res.host_bytes = loop_bytes
    return res


class _History:
    """The host's side of the compact form: k×k matrices of s_iᵀy_j and y_iᵀy_j, float64,
    for the k filled rows of S and Y — their last k (the device keeps all m rows)."""

    def __init__(self, m: int):
        self.m = m
        self.sy = np.zeros((0, 0))
        self.yy = np.zeros((0, 0))
        self.gamma = 1.0

    def __len__(self) -> int:
        return self.sy.shape[0]

    def push(self, col_sy: np.ndarray, col_yy: np.ndarray, sy: float, yy: float) -> None:
        """Append a pair given S_new·y and Y_new·y, one entry per row of S_new (the new
        pair's own last)."""
        k = min(len(self) + 1, self.m)
        col_sy, col_yy = col_sy[-k:], col_yy[-k:]
        if len(self) == self.m:
            self.sy, self.yy = self.sy[1:, 1:], self.yy[1:, 1:]
        k = len(self) + 1
        sy_m, yy_m = np.zeros((k, k)), np.zeros((k, k))
        sy_m[:-1, :-1], yy_m[:-1, :-1] = self.sy, self.yy
        sy_m[:, -1] = col_sy  # R's new column: s_iᵀ y_k for i ≤ k (the lower part is unused)
        yy_m[:, -1] = yy_m[-1, :] = col_yy
        self.sy, self.yy = sy_m, yy_m
        self.gamma = sy / yy

    def coefficients(self, sg: np.ndarray, yg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p, q) with H·g = γg + Sᵀp + Yᵀq, from u = S·g and w = Y·g (Byrd, Nocedal &
        Schnabel 1994, eq. 3.1): p = R⁻ᵀ((D + γYᵀY)R⁻¹u − γw), q = −γR⁻¹u; one entry per
        row of S, zero for the unfilled ones."""
        p, q, k = np.zeros(len(sg)), np.zeros(len(sg)), len(self)
        if not k:
            return p, q
        r = np.triu(self.sy)
        d = np.diag(np.diag(self.sy))
        r_inv_u = solve_triangular(r, sg[-k:].astype(np.float64))
        p[-k:] = solve_triangular(r, (d + self.gamma * self.yy) @ r_inv_u
                                  - self.gamma * yg[-k:].astype(np.float64), trans="T")
        q[-k:] = -self.gamma * r_inv_u
        return p, q


def _line_search(loop: Loop, x, f: float, g, d, t: float, best: Best) -> tuple | None:
    """Backtracking Armijo along the projected path ``clip(x + t·d)`` from step ``t``,
    growing a step that was too short (the curvature test the other way round); every trial
    is offered to ``best``. Returns the accepted (x_t, f_t, terms_t, g_t), or None."""
    accepted = None
    for _ in range(MAX_TRIALS):
        tr = loop.steps[PROJECT_STEP](x=x, d=d, g=g, t=np.float32(t))
        gdx = float(tr["gdx"])
        if float(tr["dx_max"]) == 0.0 or not gdx < 0:
            break
        f_t, terms_t, g_t = loop.loss(tr["x_t"])
        if not math.isfinite(f_t):
            if accepted:
                break
            raise FloatingPointError("the loss is not finite")
        best.offer(f_t, tr["x_t"], g_t, terms_t)
        if f_t <= f + ARMIJO * gdx and (accepted is None or f_t < accepted[1]):
            accepted = (tr["x_t"], f_t, terms_t, g_t)
            if t >= MAX_STEP:
                break
            # g_t·s = s·y + g·s: still as steep as WOLFE·g·s means the step was too short
            # (early on, before the history knows the scale): extrapolate
            cv = loop.steps[CURVATURE](x=x, x_t=tr["x_t"], g=g, g_t=g_t)
            if float(cv["sy"]) + gdx >= WOLFE * gdx:
                break
            t *= EXTRAPOLATE
        elif accepted is not None:  # the extrapolated step went too far: keep the last
            break
        else:  # safeguarded quadratic interpolation along the path
            t_q = -gdx * t / (2 * (f_t - f - gdx))
            t = min(max(t_q, 0.1 * t), 0.5 * t)
    return accepted


class _Pairs:
    """The history on both sides: S and Y on the device with ``m`` rows from the start, the
    unfilled (oldest) ones zero — the update then always makes tensors of one size, which
    the arena reuses (growing them row by row left a block of every size behind) — and the
    host's :class:`_History` of their products."""

    def __init__(self, loop: Loop, m: int, state: dict[str, np.ndarray] | None = None):
        self.loop, self.m = loop, m
        self.n = n = int(np.prod(loop.shape))
        self.hist = _History(m)
        if state and "S" in state and 0 < len(state["hist_sy"]) <= m:
            k = len(state["hist_sy"])
            rows = {}
            for name in ("S", "Y"):  # the filled rows, last; earlier checkpoints kept only those
                rows[name] = np.zeros((m, n), np.float32)
                rows[name][m - k:] = state[name][-k:]
            self.S, self.Y = to_device(rows["S"], loop.device), to_device(rows["Y"], loop.device)
            self.hist.sy = state["hist_sy"].astype(np.float64)
            self.hist.yy = state["hist_yy"].astype(np.float64)
            self.hist.gamma = float(state["gamma"])
            self.carried = False
        else:
            self.reset()
            if state and "gamma" in state and "S" not in state:  # a coarser scale's
                self.hist.gamma, self.carried = float(state["gamma"]), True

    def reset(self) -> None:
        """An empty history (a fresh start: steepest descent next)."""
        self.S = to_device(np.zeros((self.m, self.n), np.float32), self.loop.device)
        self.Y = to_device(np.zeros((self.m, self.n), np.float32), self.loop.device)
        self.hist = _History(self.m)
        self.carried = False  # γ brought from a coarser scale: the first step is γ·g

    def update(self, x, x_t, g, g_t) -> None:
        """Append the pair (x_t − x, g_t − g) unless it fails the curvature test (then H
        stays positive definite)."""
        up = self.loop.steps[LBFGS_UPDATE](x=x, x_t=x_t, g=g, g_t=g_t, S=self.S, Y=self.Y)
        sy, yy = float(up["sy"]), float(up["yy"])
        if not (math.isfinite(sy) and math.isfinite(yy)):
            raise FloatingPointError("the gradient is not finite")
        if sy > CURVATURE_FLOOR * yy:
            self.S, self.Y = up["S_new"], up["Y_new"]
            self.hist.push(up["Sy"], up["Yy"], sy, yy)

    def snapshot(self) -> Callable[[], dict]:
        """The state as it is now, brought home only when called (a checkpoint). Taken
        apart now: an interrupt may come after the next update, and S, Y and their
        products must stay one consistent set (the update makes new arrays, so this
        holds no copy)."""
        s, y, traffic = self.S, self.Y, self.loop.traffic
        sy, yy, gamma = self.hist.sy, self.hist.yy, self.hist.gamma
        return lambda: Lazy(S=lambda: to_host(s, traffic), Y=lambda: to_host(y, traffic),
                            hist_sy=sy.copy(), hist_yy=yy.copy(), gamma=np.array(gamma))


def lbfgs_onnx(loop: Loop, x0: np.ndarray, iterations: int, history: int,
               callback: Callback | None = None,
               state: dict[str, np.ndarray] | None = None) -> OptimizeResult:
    """Projected L-BFGS on the device; ``x0`` (3, H, W) float64 in [0, 255]; ``state`` (from
    an earlier run's ``Progress.state()``) restores the history."""
    st, start = loop.steps, time.perf_counter()
    best, done, restarts, failures, end = Best(), 0, 0, 0, Ending()
    x = loop.upload(x0)
    once = loop.traffic.bytes
    try:
        f, terms, g = loop.loss(x)
    except Interrupted as e:
        end.interrupted, end.reason = e, "interrupted"
        return _result(loop, x0, best, (math.nan, {}), 0, end, start, 0, 0)
    first = (f, terms)
    best.offer(f, x, g, terms)
    pairs = _Pairs(loop, history, state)
    with end:
        if not math.isfinite(f):
            raise FloatingPointError("the loss is not finite")
        while done < iterations:
            pr = st[LBFGS_PROJECT](x=x, g=g, S=pairs.S, Y=pairs.Y)
            if float(pr["pg_max"]) == 0.0:
                end.reason = "converged (the projected gradient is zero)"
                break
            p, q = pairs.hist.coefficients(pr["sg"], pr["yg"])
            dr = st[LBFGS_DIRECTION](x=x, g=g, gf=pr["gf"], S=pairs.S, Y=pairs.Y, p=p, q=q,
                                     gamma=np.float32(pairs.hist.gamma))
            if not float(dr["gd"]) < 0:  # rounding spoilt H: steepest descent, fresh history
                pairs.reset()
                continue
            # a first step of unit length takes ~5 extrapolations to grow; with a coarser
            # scale's γ the quasi-Newton step γ·g is the right size from the start
            t = 1.0 if len(pairs.hist) or pairs.carried else 1.0 / math.sqrt(float(pr["gg"]))
            accepted = _line_search(loop, x, f, g, dr["d"], t, best)
            if accepted is None:  # restart from the best point with an empty history
                failures += 1
                if failures > MAX_RESTARTS:
                    end.reason = LINE_SEARCH_FAILED
                    break
                restarts += 1
                x, g, f, terms = best.x, best.g, best.loss, best.terms
                pairs.reset()
                continue
            failures = 0
            x_t, f_t, terms_t, g_t = accepted
            pairs.update(x, x_t, g, g_t)
            x, f, terms, g = x_t, f_t, terms_t, g_t
            done += 1
            if callback:
                callback(Progress(done, iterations, loop.evaluations, f, terms,
                                  time.perf_counter() - start, lambda v=x: loop.fetch(v),
                                  pairs.snapshot()))
    res = _result(loop, x0, best, first, done, end, start, restarts, loop.traffic.bytes - once)
    res.gamma = pairs.hist.gamma if len(pairs.hist) else None
    return res


def adam_onnx(loop: Loop, x0: np.ndarray, iterations: int, lr: float,
              callback: Callback | None = None,
              state: dict[str, np.ndarray] | None = None, beta1: float = ADAM_MOMENTS["beta1"],
              beta2: float = ADAM_MOMENTS["beta2"], eps: float = ADAM_MOMENTS["eps"]
              ) -> OptimizeResult:
    """Adam in pixel units (lr ≈ pixel step), projected onto [0, 255] after each step;
    ``state`` (from ``Progress.state()``) restores the moments and the step count."""
    start = time.perf_counter()
    best, done, end, first = Best(), 0, Ending(), (math.nan, {})
    x = loop.upload(x0)
    zeros = np.zeros(loop.shape, np.float32)
    resumed = bool(state) and "m" in state
    m = loop.upload(state["m"] if resumed else zeros)
    v = loop.upload(state["v"] if resumed else zeros)
    k0 = int(state["step"]) if resumed else 0
    once = loop.traffic.bytes
    coef = {"lr": np.float32(lr), "beta1": np.float32(beta1), "beta2": np.float32(beta2),
            "eps": np.float32(eps)}
    with end:
        for k in range(1, iterations + 1):
            f, terms, g = loop.loss(x)
            if not math.isfinite(f):
                raise FloatingPointError("the loss is not finite")
            first = first if k > 1 else (f, terms)
            best.offer(f, x, g, terms)
            out = loop.steps[ADAM_STEP](x=x, g=g, m=m, v=v, step=np.float32(k0 + k), **coef)
            x, m, v = out["x_new"], out["m_new"], out["v_new"]
            done = k
            if callback:
                callback(Progress(k, iterations, loop.evaluations, f, terms,
                                  time.perf_counter() - start, lambda v=x: loop.fetch(v),
                                  lambda m=m, v=v, k=k: {"m": to_host(m, loop.traffic)[0],
                                                         "v": to_host(v, loop.traffic)[0],
                                                         "step": np.array(k0 + k)}))
        if iterations:  # the final step's loss, so the best iterate includes it
            f, terms, g = loop.loss(x)
            if math.isfinite(f):
                best.offer(f, x, g, terms)
    return _result(loop, x0, best, first, done, end, start, 0, loop.traffic.bytes - once)
