"""The exported graphs with the real VGG19 weights against the float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from nst_onnx.graph import LossSpec
from nst_onnx.runtime import make_session


def _dense(weights):
    return {k: (v.weight, v.b) for k, v in weights.layers.items()}


def test_forward_features_match_reference_at_32(models_dir, real_weights):
    spec = LossSpec()
    sess = make_session(models_dir / spec.key / "features.onnx", threads=2)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32))
    outs = dict(zip([o.name for o in sess.get_outputs()],
                    sess.run(None, {"image": x[None].astype(np.float32)})))
    feats = ref.features(x, _dense(real_weights), list(spec.all_layers), "max")
    for n in spec.content_layers:
        got, want = outs[f"features_{n}"][0], feats[n]
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
    for n in spec.style_layers:
        got, want = outs[f"gram_{n}"], ref.gram(feats[n])
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4


def test_directional_derivative_at_64(st, real_weights, images):
    """grad·d from the graph vs central differences of the float64 reference loss."""
    problem = st.prepare(images["tubingen"], images["starry_night"], size=64)
    h, w, _ = problem.shape
    rng = np.random.default_rng(1)
    x = np.clip(problem.content[0].astype(np.float64) + rng.normal(0, 20, (3, h, w)), 0, 255)
    t = problem.evaluate(x)
    fixed = problem.evaluator.fixed
    spec = st.spec
    ct = {n: fixed[f"target_{n}"][0].astype(np.float64) for n in spec.content_layers}
    gt = {n: fixed[f"target_gram_{n}"].astype(np.float64) for n in spec.style_layers}

    def ref_loss(z):
        return ref.loss(z, _dense(real_weights), spec.content_layers, spec.style_layers,
                        spec.pooling, ct, gt, fixed["content_weights"], fixed["style_weights"],
                        float(fixed["tv_weight"]))

    assert t.loss == pytest.approx(ref_loss(x), rel=1e-4)
    # float64 reference: a small step stays clear of ReLU / max-pool switches (at 1e-3 a few
    # windows switch and the difference is off by ~0.5%; at 1e-5 it agrees to ~1e-7)
    eps = 1e-5
    for _ in range(2):
        d = rng.standard_normal(x.shape)
        fd = (ref_loss(x + eps * d) - ref_loss(x - eps * d)) / (2 * eps)
        an = float(np.sum(t.grad[0].astype(np.float64) * d))
        assert an == pytest.approx(fd, rel=1e-3)
