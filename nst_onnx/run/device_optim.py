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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.linalg import solve_triangular

from ..config import ADAM_MOMENTS
from ..errors import Interrupted
from ..graphs.steps import ADAM_STEP, CURVATURE, LBFGS_DIRECTION, LBFGS_PROJECT, LBFGS_UPDATE, PROJECT_STEP
from .binding import DeviceGraph, Traffic, row, to_device, to_host
from .progress import (
    LINE_SEARCH_FAILED,
    MAX_RESTARTS,
    Best,
    Callback,
    Ending,
    Lazy,
    OptimizeResult,
    Progress,
    Rows,
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


@dataclass(frozen=True)
class _History:
    """The host's side of the compact form: k×k matrices of s_iᵀy_j and y_iᵀy_j, float64,
    for the k filled rows of S and Y, which ``slots`` names in age order (oldest first).
    Immutable: an update makes a new one, assigned in one step, so an interrupt never finds
    products that disagree with the rows."""

    m: int
    slots: tuple[int, ...] = ()
    sy: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    yy: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    gamma: float = 1.0

    def __len__(self) -> int:
        return len(self.slots)

    def without_oldest(self) -> _History:
        return replace(self, slots=self.slots[1:], sy=self.sy[1:, 1:], yy=self.yy[1:, 1:])

    def free_slot(self) -> int:
        """The row the next pair goes to: the first that no pair uses."""
        return min(set(range(self.m)) - set(self.slots))

    def with_pair(self, slot: int, col_sy: np.ndarray, col_yy: np.ndarray, sy: float,
                  yy: float) -> _History:
        """This history with the pair just written to row ``slot`` appended, given S·y and
        Y·y over all rows of S and Y (that row's own entries are s·y and y·y)."""
        slots = (*self.slots, slot)
        col_sy = np.asarray(col_sy, np.float64)[list(slots)]
        col_yy = np.asarray(col_yy, np.float64)[list(slots)]
        col_sy[-1], col_yy[-1] = sy, yy
        k = len(slots)
        sy_m, yy_m = np.zeros((k, k)), np.zeros((k, k))
        sy_m[:-1, :-1], yy_m[:-1, :-1] = self.sy, self.yy
        sy_m[:, -1] = col_sy  # R's new column: s_iᵀ y_k for i ≤ k (the lower part is unused)
        yy_m[:, -1] = yy_m[-1, :] = col_yy
        return _History(self.m, slots, sy_m, yy_m, sy / yy)

    def coefficients(self, sg: np.ndarray, yg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p, q) with H·g = γg + Sᵀp + Yᵀq, from u = S·g and w = Y·g (Byrd, Nocedal &
        Schnabel 1994, eq. 3.1): p = R⁻ᵀ((D + γYᵀY)R⁻¹u − γw), q = −γR⁻¹u; one entry per
        row of S, zero for the rows no pair uses."""
        p, q, rows = np.zeros(len(sg)), np.zeros(len(sg)), list(self.slots)
        if not rows:
            return p, q
        r = np.triu(self.sy)
        d = np.diag(np.diag(self.sy))
        r_inv_u = solve_triangular(r, np.asarray(sg, np.float64)[rows])
        p[rows] = solve_triangular(r, (d + self.gamma * self.yy) @ r_inv_u
                                   - self.gamma * np.asarray(yg, np.float64)[rows], trans="T")
        q[rows] = -self.gamma * r_inv_u
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
    """The history on both sides: S and Y on the device, ``m`` rows each made once and
    written in place — each new pair goes to a row no pair uses (the oldest one's, once all
    are filled), through the update graph's outputs bound to that row — and the host's
    :class:`_History`, which knows which row holds which pair. A new (M, N) pair of tensors
    per update would hold the history twice at every update (3 GB more at 4096 px with 10
    pairs). Rows the current history names are never written: a pair's row is dropped from
    it before it is reused."""

    def __init__(self, loop: Loop, m: int, state: Mapping[str, np.ndarray] | None = None):
        self.loop, self.m = loop, m
        self.n = n = int(np.prod(loop.shape))
        rows = {name: np.zeros((m, n), np.float32) for name in ("S", "Y")}
        self.hist, self.carried = _History(m), False
        if state and "S" in state and 0 < len(state["hist_sy"]) <= m:
            k = len(state["hist_sy"])
            for name in rows:  # the filled rows, last; earlier checkpoints kept only those
                rows[name][m - k:] = state[name][-k:]
            self.hist = _History(m, tuple(range(m - k, m)),
                                 state["hist_sy"].astype(np.float64),
                                 state["hist_yy"].astype(np.float64), float(state["gamma"]))
        elif state and "gamma" in state and "S" not in state:  # a coarser scale's γ
            # the first step is then γ·g
            self.hist, self.carried = _History(m, gamma=float(state["gamma"])), True
        self.S, self.Y = to_device(rows["S"], loop.device), to_device(rows["Y"], loop.device)

    def reset(self) -> None:
        """An empty history (a fresh start: steepest descent next); the rows keep what they
        hold, which no coefficient reaches."""
        self.hist, self.carried = _History(self.m), False

    def update(self, x, x_t, g, g_t) -> None:
        """Append the pair (x_t − x, g_t − g) unless it fails the curvature test (then H
        stays positive definite)."""
        st = self.loop.steps
        cv = st[CURVATURE](x=x, x_t=x_t, g=g, g_t=g_t)
        sy, yy = float(cv["sy"]), float(cv["yy"])
        if not (math.isfinite(sy) and math.isfinite(yy)):
            raise FloatingPointError("the gradient is not finite")
        if not sy > CURVATURE_FLOOR * yy:
            return
        if len(self.hist) == self.m:
            self.hist = self.hist.without_oldest()
        k = self.hist.free_slot()
        shape = self.loop.shape
        up = st[LBFGS_UPDATE](x=x, x_t=x_t, g=g, g_t=g_t, S=self.S, Y=self.Y,
                              into={"s": row(self.S, k, shape), "y": row(self.Y, k, shape)})
        self.hist = self.hist.with_pair(k, up["Sy"], up["Yy"], sy, yy)

    def snapshot(self) -> Callable[[], Mapping]:
        """The state, read when called (a checkpoint): the history then and the rows it
        names, in age order after the unfilled rows (zero) — the layout a resume reads. Not
        read now: an interrupt may come during the next update, after a row this history
        names was handed to a new pair."""
        def state() -> Lazy:
            hist = self.hist
            return Lazy(S=lambda: self._in_order(self.S, hist),
                        Y=lambda: self._in_order(self.Y, hist),
                        hist_sy=hist.sy.copy(), hist_yy=hist.yy.copy(),
                        gamma=np.array(hist.gamma))
        return state

    def _in_order(self, value, hist: _History) -> Rows:
        # on the CPU to_host gives the rows themselves: the checkpoint writes them, no copy
        return Rows(to_host(value, self.loop.traffic), list(hist.slots), self.m)


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
