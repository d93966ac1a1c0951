"""The optimiser's vector work as ONNX graphs, so the whole loop runs where the loss graph
runs (any execution provider) and only scalars cross to the host (docs/design.md).

Projected L-BFGS with the box [LOW, HIGH] (Byrd, Nocedal & Schnabel's compact form; the
bounds as in Kim, Sra & Dhillon's projected quasi-Newton): the free variables at x are
those not held at a bound by the gradient, ``free = ¬((x ≤ LOW ∧ g > 0) ∨ (x ≥ HIGH ∧ g < 0))``;
the direction is ``d = −P H P g`` with P the free-variable mask and H the L-BFGS inverse
Hessian, ``H g = γ g + S p + Y q``, where the host solves for the 2m coefficients (p, q)
from m×m matrices in float64; trial points are projected, ``clip(x + t·d)``.

Each graph is built by a pure function next to its declared interface. Vectors are images
(1, 3, H, W); the history S, Y is (M, N) with N = 3·H·W, one pair per row, in the order
the host's ring puts them (it keeps which row holds which pair).
"""

from __future__ import annotations

import onnx

from ..config import HIGH, LOW
from .builder import FLOAT, GraphBuilder
from .interface import Interface, Tensor

IMAGE = (1, 3, "H", "W")
HISTORY = ("M", "N")


def _vec(name: str, meaning: str) -> Tensor:
    return Tensor(name, IMAGE, meaning, "state")


def _scalar(name: str, meaning: str, role: str = "scalar") -> Tensor:
    return Tensor(name, (), meaning, role)


def _history(name: str, meaning: str) -> Tensor:
    return Tensor(name, HISTORY, meaning, "state")


def _dot(g: GraphBuilder, a: str, b: str) -> str:
    return g.op("ReduceSum", g.op("Mul", a, b), keepdims=0)


def _rows_dot(g: GraphBuilder, m: str, v: str) -> str:
    """(M, N) · v → (M,): each history row against the flattened vector ``v``."""
    col = g.op("Reshape", v, g.ints(-1, 1))
    return g.op("Reshape", g.op("MatMul", m, col), g.ints(-1))


def _free(g: GraphBuilder, x: str, grad: str) -> str:
    """1.0 where x may move along −grad, 0.0 where a bound holds it."""
    def held(at_bound: str, pushed: str) -> str:  # (a and b) as 0/1 floats: no And/Or on WebGPU
        return g.op("Mul", g.op("Cast", at_bound, to=FLOAT), g.op("Cast", pushed, to=FLOAT))

    at_low = held(g.op("LessOrEqual", x, g.const(LOW)), g.op("Greater", grad, g.const(0.0)))
    at_high = held(g.op("GreaterOrEqual", x, g.const(HIGH)), g.op("Less", grad, g.const(0.0)))
    return g.op("Sub", g.op("Sub", g.const(1.0), at_low), at_high)  # LOW < HIGH: never both


# --------------------------------------------------------------------------- L-BFGS


def lbfgs_project_io() -> Interface:
    return Interface("nst_lbfgs_project", "lbfgs_project.onnx", (
        _vec("x", "current image (feasible)"), _vec("g", "gradient at x"),
        _history("S", "steps s_i = x_{i+1} − x_i"), _history("Y", "y_i = g_{i+1} − g_i"),
    ), (
        _vec("gf", "gradient on the free variables (0 where a bound holds x)"),
        Tensor("sg", ("M",), "S·gf", "scalar"), Tensor("yg", ("M",), "Y·gf", "scalar"),
        _scalar("gg", "gf·gf"),
        _scalar("pg_max", "max |clip(x − g) − x|: the projected gradient's size (0 at a "
                          "stationary point)"),
    ))


def build_lbfgs_project() -> onnx.ModelProto:
    g = GraphBuilder()
    free = _free(g, "x", "g")
    gf = g.op("Mul", "g", free, outputs=["gf"])
    g.op("Identity", _rows_dot(g, "S", gf), outputs=["sg"])
    g.op("Identity", _rows_dot(g, "Y", gf), outputs=["yg"])
    g.op("Identity", _dot(g, gf, gf), outputs=["gg"])
    moved = g.op("Sub", g.op("Clip", g.op("Sub", "x", "g"), g.const(LOW), g.const(HIGH)), "x")
    g.op("ReduceMax", g.op("Abs", moved), keepdims=0, outputs=["pg_max"])
    return g.finish(lbfgs_project_io())


def lbfgs_direction_io() -> Interface:
    return Interface("nst_lbfgs_direction", "lbfgs_direction.onnx", (
        _vec("x", "current image"), _vec("g", "gradient at x"), _vec("gf", "free gradient"),
        _history("S", "steps"), _history("Y", "gradient changes"),
        Tensor("p", ("M",), "coefficients of S (host-solved compact form)", "coefficient"),
        Tensor("q", ("M",), "coefficients of Y (γ included)", "coefficient"),
        _scalar("gamma", "initial inverse Hessian scale γ = s·y / y·y", "coefficient"),
    ), (
        _vec("d", "search direction −P(γ·gf + Sᵀp + Yᵀq)"),
        _scalar("gd", "g·d (negative for a descent direction)"),
    ))


def build_lbfgs_direction() -> onnx.ModelProto:
    g = GraphBuilder()
    shape = g.op("Shape", "g")
    comb = g.op("Add", g.op("MatMul", g.op("Unsqueeze", "p", g.ints(0)), "S"),
                g.op("MatMul", g.op("Unsqueeze", "q", g.ints(0)), "Y"))  # (1, N)
    hg = g.op("Add", g.op("Mul", "gf", "gamma"), g.op("Reshape", comb, shape))
    d = g.op("Neg", g.op("Mul", hg, _free(g, "x", "g")), outputs=["d"])
    g.op("Identity", _dot(g, "g", d), outputs=["gd"])
    return g.finish(lbfgs_direction_io())


def project_step_io() -> Interface:
    return Interface("nst_project_step", "project_step.onnx", (
        _vec("x", "current image"), _vec("d", "search direction"), _vec("g", "gradient at x"),
        _scalar("t", "step length", "coefficient"),
    ), (
        _vec("x_t", f"clip(x + t·d, {LOW:g}, {HIGH:g})"),
        _scalar("gdx", "g·(x_t − x): the first-order change along the projected path"),
        _scalar("dx_max", "max |x_t − x|"),
    ))


def build_project_step() -> onnx.ModelProto:
    g = GraphBuilder()
    x_t = g.op("Clip", g.op("Add", "x", g.op("Mul", "d", "t")), g.const(LOW), g.const(HIGH),
               outputs=["x_t"])
    dx = g.op("Sub", x_t, "x")
    g.op("Identity", _dot(g, "g", dx), outputs=["gdx"])
    g.op("ReduceMax", g.op("Abs", dx), keepdims=0, outputs=["dx_max"])
    return g.finish(project_step_io())


def curvature_io() -> Interface:
    return Interface("nst_curvature", "curvature.onnx", (
        _vec("x", "previous image"), _vec("x_t", "trial image"), _vec("g", "gradient at x"),
        _vec("g_t", "gradient at x_t"),
    ), (
        _scalar("sy", "s·y with s = x_t − x, y = g_t − g"), _scalar("yy", "y·y"),
    ))


def build_curvature() -> onnx.ModelProto:
    """What the line search needs to tell a too-short step, without touching the history."""
    g = GraphBuilder()
    s = g.op("Sub", "x_t", "x")
    y = g.op("Sub", "g_t", "g")
    g.op("Identity", _dot(g, s, y), outputs=["sy"])
    g.op("Identity", _dot(g, y, y), outputs=["yy"])
    return g.finish(curvature_io())


def lbfgs_update_io() -> Interface:
    return Interface("nst_lbfgs_update", "lbfgs_update.onnx", (
        _vec("x", "previous image"), _vec("x_t", "accepted image"), _vec("g", "gradient at x"),
        _vec("g_t", "gradient at x_t"), _history("S", "steps"), _history("Y", "gradient changes"),
    ), (
        _vec("s", "x_t − x, the new pair's step: bound by the host to a free row of S"),
        _vec("y", "g_t − g: bound to the same row of Y"),
        Tensor("Sy", ("M",), "S·y, one entry per row (the new row's own entry is replaced by "
                             "s·y on the host)", "scalar"),
        Tensor("Yy", ("M",), "Y·y, one entry per row (the new row's: y·y)", "scalar"),
    ))


def build_lbfgs_update() -> onnx.ModelProto:
    """The history written in place: the host binds ``s`` and ``y`` to a row of S and Y that
    its history does not use (the oldest, once all are filled), so no (M, N) tensor is made
    per update. That row's own products may be read before or after the write; the host
    replaces them with s·y and y·y from the curvature graph."""
    g = GraphBuilder()
    g.op("Sub", "x_t", "x", outputs=["s"])
    y = g.op("Sub", "g_t", "g", outputs=["y"])
    g.op("Identity", _rows_dot(g, "S", y), outputs=["Sy"])
    g.op("Identity", _rows_dot(g, "Y", y), outputs=["Yy"])
    return g.finish(lbfgs_update_io())


# --------------------------------------------------------------------------- Adam


def adam_step_io() -> Interface:
    return Interface("nst_adam_step", "adam_step.onnx", (
        _vec("x", "current image"), _vec("g", "gradient at x"),
        _vec("m", "first moment"), _vec("v", "second moment"),
        _scalar("lr", "step size, pixel levels", "coefficient"),
        _scalar("beta1", "first-moment decay", "coefficient"),
        _scalar("beta2", "second-moment decay", "coefficient"),
        _scalar("eps", "denominator floor", "coefficient"),
        _scalar("step", "step number k ≥ 1 (bias correction)", "coefficient"),
    ), (
        _vec("x_new", f"clip(x − lr·m̂/(√v̂ + eps), {LOW:g}, {HIGH:g})"),
        _vec("m_new", "β1·m + (1 − β1)·g"), _vec("v_new", "β2·v + (1 − β2)·g²"),
    ))


def build_adam_step() -> onnx.ModelProto:
    g = GraphBuilder()
    one = g.const(1.0)
    m_new = g.op("Add", g.op("Mul", "m", "beta1"),
                 g.op("Mul", "g", g.op("Sub", one, "beta1")), outputs=["m_new"])
    v_new = g.op("Add", g.op("Mul", "v", "beta2"),
                 g.op("Mul", g.op("Mul", "g", "g"), g.op("Sub", one, "beta2")), outputs=["v_new"])
    m_hat = g.op("Div", m_new, g.op("Sub", one, g.op("Pow", "beta1", "step")))
    v_hat = g.op("Div", v_new, g.op("Sub", one, g.op("Pow", "beta2", "step")))
    step = g.op("Div", g.op("Mul", m_hat, "lr"), g.op("Add", g.op("Sqrt", v_hat), "eps"))
    g.op("Clip", g.op("Sub", "x", step), g.const(LOW), g.const(HIGH), outputs=["x_new"])
    return g.finish(adam_step_io())


# The step graphs by name: the optimisers and the export key them by these constants.
LBFGS_PROJECT, LBFGS_DIRECTION, PROJECT_STEP, CURVATURE, LBFGS_UPDATE, ADAM_STEP = (
    "lbfgs_project", "lbfgs_direction", "project_step", "curvature", "lbfgs_update", "adam_step")
STEP_GRAPHS = {LBFGS_PROJECT: (lbfgs_project_io, build_lbfgs_project),
               LBFGS_DIRECTION: (lbfgs_direction_io, build_lbfgs_direction),
               PROJECT_STEP: (project_step_io, build_project_step),
               CURVATURE: (curvature_io, build_curvature),
               LBFGS_UPDATE: (lbfgs_update_io, build_lbfgs_update),
               ADAM_STEP: (adam_step_io, build_adam_step)}
