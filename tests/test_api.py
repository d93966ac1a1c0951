"""The documented Python API: StyleTransfer, prepare/Problem, stylize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nst_onnx import BadInput


def test_problem_loss_and_grad_against_finite_differences(st, images):
    problem = st.prepare(images["tubingen"], images["starry_night"], size=48)
    h, w, c = problem.shape
    assert c == 3 and max(h, w) == 48
    rng = np.random.default_rng(0)
    x = np.clip(problem.content[0].transpose(1, 2, 0) + rng.normal(0, 10, problem.shape), 0, 255)
    loss, grad = problem.loss_and_grad(x)
    assert isinstance(loss, float) and grad.shape == x.shape and grad.dtype == np.float64
    # The loss is ~5e8 in float32 (rounding ~±500 per evaluation): along random directions
    # the derivative drowns in that, so this checks the steepest direction, where a layout
    # mix-up (H, W, C order) would show; the precise float64 checks are in test_gradients
    # and test_real_weights.
    d = grad / np.linalg.norm(grad)
    eps = 1.0
    fd = (problem.loss_and_grad(x + eps * d)[0] - problem.loss_and_grad(x - eps * d)[0]) / (2 * eps)
    assert float(np.sum(grad * d)) == pytest.approx(fd, rel=1e-2)
    # and the HWC contract is the CHW fast path, transposed
    t = problem.evaluate(x.transpose(2, 0, 1))
    assert t.loss == loss
    assert np.array_equal(t.grad[0].transpose(1, 2, 0), grad.astype(np.float32))


def test_stylize_accepts_arrays_and_pil_and_lists(st, images):
    content = np.asarray(Image.open(images["tubingen"]).convert("RGB"))
    style = Image.open(images["starry_night"])
    img = st.stylize(content, [style, style], size=40, iterations=3, style_blend=[1, 1])
    assert isinstance(img, Image.Image) and max(img.size) == 40


def test_blend_is_a_weighted_mean_of_grams(st, images):
    a = st.prepare(images["tubingen"], images["starry_night"], size=48)
    b = st.prepare(images["tubingen"], images["tubingen"], size=48)
    ab = st.prepare(images["tubingen"], [images["starry_night"], images["tubingen"]], size=48,
                    style_blend=[3, 1])
    for n in st.spec.style_layers:
        k = f"target_gram_{n}"
        want = 0.75 * a.evaluator.fixed[k] + 0.25 * b.evaluator.fixed[k]
        assert np.allclose(ab.evaluator.fixed[k], want, rtol=1e-5, atol=1e-3)


def test_shape_mismatch_is_bad_input(st, images):
    problem = st.prepare(images["tubingen"], images["starry_night"], size=32)
    with pytest.raises(BadInput):
        problem.loss_and_grad(np.zeros((5, 5, 3)))


def test_run_applies_the_stop_rule_and_says_so(st, images):
    """run() honours RunOptions.stop_tolerance (a progress hook), as transfer() does."""
    from nst_onnx.config import RunOptions

    problem = st.prepare(images["tubingen"], images["starry_night"], size=48)
    r = st.run(problem, RunOptions(stop_tolerance=0.05, iterations=400))
    assert r.optimize.iterations < 400
    assert r.optimize.stop_reason.startswith("finished: the loss fell by less than 0.05")
    assert st.run(problem, iterations=30).optimize.iterations == 30  # given: exactly that


@pytest.mark.parametrize("bad, message", [
    (dict(iterations=[10, 5]), "give iterations as one number"),
    (dict(scales=2), "give scales to transfer()"),
    (dict(size=64), "prepared at 48 px"),
])
def test_run_refuses_what_one_problem_cannot_honour(st, images, bad, message):
    problem = st.prepare(images["tubingen"], images["starry_night"], size=48)
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        st.run(problem, **bad)


def test_init_image_obeys_max_image_pixels_and_is_decoded_once(st, images, tmp_path,
                                                               monkeypatch):
    from nst_onnx.io import images as image_io

    big = tmp_path / "init.png"
    Image.new("RGB", (300, 200), (10, 20, 30)).save(big)
    with pytest.raises(BadInput, match="init image"):
        st.transfer(images["tubingen"], images["starry_night"], size=48, iterations=2,
                    init=str(big), max_image_pixels=50_000)
    opened = []
    real = image_io._open
    monkeypatch.setattr(image_io, "_open", lambda p, *a: opened.append(p) or real(p, *a))
    st.transfer(images["tubingen"], images["starry_night"], size=64, scales=2, iterations=2,
                init=str(big))
    assert opened.count(big) == 1  # not once per scale and again for the fingerprint


def test_fixed_inputs_go_to_the_device_once(st, images, monkeypatch):
    """The evaluator's fixed inputs are copied once and shared by every device loop (on CUDA
    the evaluator binds the same copies)."""
    from nst_onnx.run import binding

    problem = st.prepare(images["tubingen"], images["starry_night"], size=48)
    calls = []
    real = binding.to_device
    monkeypatch.setattr(binding, "to_device", lambda a, d: calls.append(a.shape) or real(a, d))
    for _ in range(2):
        st.run(problem, iterations=2, optimizer="adam")
    fixed = len(problem.evaluator.fixed)
    assert len(calls) == fixed, calls  # the loops' images and moments go through Loop.upload
