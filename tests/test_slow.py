"""Full-size checks (`python -m pytest -m slow`; a few minutes on 2 cores): the gradient at
working sizes, against the float64 reference and against the graph's own loss, and a whole
512 px run from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import reference as ref
from conftest import EXAMPLES

pytestmark = pytest.mark.slow


def test_gradient_at_256_against_the_float64_reference(st, real_weights):
    problem = st.prepare(EXAMPLES / "tubingen.jpg", EXAMPLES / "starry_night.jpg", size=256)
    rng = np.random.default_rng(5)
    x = np.clip(problem.content[0].astype(np.float64) + rng.normal(0, 20, (3, *problem.shape[:2])),
                0, 255)
    t = problem.evaluate(x)
    ref_loss = ref.problem_loss(problem, real_weights, st.spec)

    assert t.loss == pytest.approx(ref_loss(x), rel=1e-4)
    # random directions on 16×16 patches: over the whole image, grad·d of a random d sums
    # ~2e5 float32 terms of both signs and the rounding alone reaches ~1e-3
    for y0, x0 in [(40, 60), (150, 200)]:
        d = np.zeros_like(x)
        d[:, y0:y0 + 16, x0:x0 + 16] = rng.standard_normal((3, 16, 16))
        eps = 1e-5
        fd = (ref_loss(x + eps * d) - ref_loss(x - eps * d)) / (2 * eps)
        assert float(np.sum(t.grad[0].astype(np.float64) * d)) == pytest.approx(fd, rel=1e-3)


def test_gradient_at_512_along_the_steepest_direction(st):
    """The default objective at 512×384: grad·d against (L(x+εd) − L(x−εd))/2ε of the
    graph's own float32 loss, along the gradient (random directions drown in float32
    rounding of a ~1e8 loss)."""
    problem = st.prepare(EXAMPLES / "tubingen.jpg", EXAMPLES / "starry_night.jpg", size=512)
    rng = np.random.default_rng(6)
    x = np.clip(problem.content[0].astype(np.float64) + rng.normal(0, 10, (3, *problem.shape[:2])),
                1, 254)
    t = problem.evaluate(x)
    d = t.grad[0].astype(np.float64)
    d /= np.linalg.norm(d)
    eps = 2.0
    fd = (problem.evaluate(x + eps * d).loss - problem.evaluate(x - eps * d).loss) / (2 * eps)
    assert float(np.sum(t.grad[0] * d)) == pytest.approx(fd, rel=1e-2)


def test_whole_512_run_from_the_command_line(models_dir, tmp_path):
    from typer.testing import CliRunner

    from nst_onnx.cli import app

    out = tmp_path / "out.png"
    r = CliRunner().invoke(app, ["stylize", str(EXAMPLES / "tubingen.jpg"),
                                 str(EXAMPLES / "starry_night.jpg"), "-o", str(out), "--size",
                                 "512", "--iterations", "30", "--json", "--models",
                                 str(models_dir)])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["iterations"] == 30 and s["final_loss"] < 0.2 * s["initial_loss"]
    assert (s["width"], s["height"]) == (512, 384)


def test_gpu_wheel_on_a_machine_without_a_gpu(tmp_path, models_dir):
    """Case (b) of the CUDA issue: onnxruntime-gpu installed, no GPU or CUDA libraries.
    `--device cuda` → exit 2, one line naming what failed to load; `--device auto` → runs on
    the CPU with one notice line. Installs onnxruntime-gpu into a fresh venv (needs PyPI)."""
    import os
    import subprocess
    import sys

    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this environment has onnxruntime-gpu already")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    r = subprocess.run([*pip, "onnxruntime-gpu", "onnx", "numpy", "scipy", "pillow", "typer"],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.skip(f"could not install onnxruntime-gpu: {r.stderr.strip()[-200:]}")
    subprocess.run([*pip, "--no-deps", str(EXAMPLES.parent)], check=True, timeout=300)
    nst = [str(venv / "bin" / "nst"), "stylize", str(EXAMPLES / "tubingen.jpg"),
           str(EXAMPLES / "starry_night.jpg"), "--size", "32", "--iterations", "2",
           "--models", str(models_dir)]
    env = dict(os.environ, PYTHONPATH="")
    r = subprocess.run([*nst, "-o", str(tmp_path / "c.png"), "--device", "cuda"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "CUDA is not usable" in r.stderr and ".so" in r.stderr, r.stderr
    r = subprocess.run([*nst, "-o", str(tmp_path / "a.png"), "--json"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["device"] == "cpu"
    r = subprocess.run([*nst, "-o", str(tmp_path / "b.png")], capture_output=True, text=True,
                       timeout=300, env=env)
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note:")]
    assert r.returncode == 0 and len(notes) == 1 and "running on the CPU" in notes[0], r.stderr
    assert "Traceback" not in r.stderr and "[E:onnxruntime" not in r.stderr
