"""Coarse-to-fine plans and runs, and the stop rule that ends a run once it is finished."""

from __future__ import annotations

import pytest

from nst_onnx import BadInput
from nst_onnx.api import plan_scales


def test_plan_scales():
    assert plan_scales(512, None) == ([512], [500])
    assert plan_scales(1024, None) == ([512, 1024], [120, 35])
    assert plan_scales(2048, None) == ([512, 1024, 2048], [120, 35, 35])
    assert plan_scales(1024, None, 500) == ([512, 1024], [500, 100])
    assert plan_scales(512, 3, 400) == ([128, 256, 512], [400, 179, 80])
    assert plan_scales(512, 2, 30) == ([256, 512], [30, 30])
    assert plan_scales(600, [150, 300, 600], [300, 100, 30]) == ([150, 300, 600], [300, 100, 30])
    with pytest.raises(BadInput, match="one per scale"):
        plan_scales(512, 3, [100, 50])
    with pytest.raises(BadInput, match="increasing"):
        plan_scales(512, [512, 256], 10)


def test_coarse_to_fine_starts_each_scale_from_the_last(st, images):
    r = st.transfer(images["tubingen"], images["starry_night"], size=96, iterations=[10, 4],
                    scales=[48, 96])
    assert max(r.image.size) == 96
    assert [s["size"] for s in r.scales] == [48, 96]
    assert r.summary()["iterations"] == 14
    fresh = st.prepare(images["tubingen"], images["starry_night"], size=96)
    from_content = fresh.evaluate(fresh.initial("content")).loss
    # the fine scale began from the upscaled coarse result, well below the content's loss
    assert r.scales[1]["initial_loss"] < 0.8 * from_content


def test_stop_rule_ends_a_default_run_and_iterations_mean_exactly(st, images):
    """Without --iterations a run ends once its loss fell by less than τ over the last
    STOP_WINDOW iterations; with --iterations N it makes exactly N, unless a tolerance is asked for."""
    from nst_onnx.config import STOP_WINDOW

    args = (images["tubingen"], images["starry_night"])
    r = st.transfer(*args, size=32, stop_tolerance=0.05)  # a loose τ: ends early
    s = r.summary()
    assert STOP_WINDOW < s["iterations"] < 500 and s["stop_reason"].startswith("finished")
    r = st.transfer(*args, size=32, iterations=30)
    assert r.summary()["iterations"] == 30
    assert r.summary()["stop_reason"] == "iteration budget reached"
    r = st.transfer(*args, size=32, iterations=400, stop_tolerance=0.05)
    assert r.summary()["iterations"] < 400



def test_a_finer_scale_starts_with_the_coarser_ones_step_scale(st, images):
    """L-BFGS's γ comes along to the next scale (grown with its pixels), so that scale's
    first iteration takes the quasi-Newton step at once: 2 evaluations (the start and the
    accepted step) where a fresh unit step needs ~5 extrapolations."""
    from nst_onnx.config import LossWeights, RunOptions

    seen = []
    st.transfer(images["tubingen"], images["starry_night"],
                RunOptions(size=96, scales=[48, 96], iterations=[6, 2], checkpoint_every=0),
                LossWeights(), callback=lambda p: seen.append((p.scale, p.evaluations)))
    first = {scale: evaluations for scale, evaluations in reversed(seen)}
    assert first[48] >= 4 and first[96] <= 3, first


def test_every_scale_tiles_by_the_memory_free_as_the_job_began(st, images, monkeypatch):
    """Later scales see this process's own arena as taken; their tiles are chosen with the
    free memory read once, as the job began (a 4096 px scale after an untiled 2048 px one
    got 48 tiles of 512 px where the plan had 1024)."""
    from nst_onnx.config import LossWeights, RunOptions
    from nst_onnx.run import resources

    free = iter(range(64000, 0, -8000))  # MB, less at every read
    monkeypatch.setattr(resources, "available_mb", lambda: float(next(free)))
    seen = []
    choose = resources.choose_tile

    def spy(*args, **kwargs):
        seen.append(args[7] if len(args) > 7 else kwargs.get("free"))
        return choose(*args, **kwargs)
    monkeypatch.setattr(resources, "choose_tile", spy)
    st.transfer(images["tubingen"], images["starry_night"],
                RunOptions(size=96, scales=[48, 96], iterations=[2, 1], checkpoint_every=0),
                LossWeights())
    assert len(seen) >= 3 and set(seen[-2:]) == {64000}, seen
