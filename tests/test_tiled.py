"""Exact tiled evaluation (issue 19): window by window, the very objective of the whole image —
its loss against a float64 evaluation of the untiled features, its gradient against the
untiled graph's, its targets against the features graph's — at odd sizes, both poolings,
two layer sets, with and without masks; the tiles partition every layer's positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from nst_onnx.config import LossSpec
from nst_onnx.graphs.calibrate import load_scales
from nst_onnx.graphs.interface import inv_sizes, loss_io
from nst_onnx.graphs.networks import (
    build_features_graph,
    build_loss_graph,
    build_window_features_graph,
    build_window_loss_graph,
)
from nst_onnx.graphs.windows import WINDOW_MOVES
from nst_onnx.run.binding import Evaluator, Traffic, to_device
from nst_onnx.run.tiled import DeviceWindows, TiledEvaluator, plan_tiles, tiled_features
from nst_onnx.vgg19 import channels, downsampling, halo

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEEP = LossSpec()  # relu4_2 / relu1_1 … relu5_1: halo 80
SHALLOW = LossSpec(("relu2_2",), ("relu1_1", "relu2_1", "relu3_1"))  # halo 16


def _session(model):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])


def _setup(weights, spec, h, w, seed=0):
    scales = load_scales()[0] if spec.pooling == "avg" else None
    graphs = [_session(b(weights, spec, scales)) for b in (
        build_features_graph, build_loss_graph, build_window_features_graph,
        build_window_loss_graph)]
    rng = np.random.default_rng(seed)
    content = rng.uniform(0, 255, (1, 3, h, w)).astype(np.float32)
    # a style with other statistics, so G − A is no float32 cancellation
    style = (rng.uniform(0, 255, (1, 3, h - 7, w + 5)) ** 2 / 255
             * np.array([1.0, 0.6, 0.3])[None, :, None, None]).astype(np.float32)
    return graphs, content, style, rng


def _features(session, x):
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": x})))


def _fixed(spec, fc, fs, h, w):
    fixed = {f"target_{n}": fc[f"features_{n}"] for n in spec.content_layers}
    fixed |= {f"target_gram_{n}": fs[f"gram_{n}"] for n in spec.style_layers}
    return fixed | {"content_weights": np.full(len(spec.content_layers), 5.0),
                    "style_weights": np.array([100.0 / (i + 1) for i in
                                               range(len(spec.style_layers))]),
                    "tv_weight": np.array(1e-3), "inv_sizes": inv_sizes(spec, h, w)}


def _float64_loss(spec, fixed, feats, x):
    """The objective from the untiled features graph's outputs, summed in float64."""
    total = 0.0
    for i, n in enumerate(spec.content_layers):
        d = feats[f"features_{n}"].astype(np.float64) - fixed[f"target_{n}"]
        total += fixed["content_weights"][i] * np.mean(d ** 2)
    for i, n in enumerate(spec.style_layers):
        d = feats[f"gram_{n}"].astype(np.float64) - fixed[f"target_gram_{n}"]
        total += fixed["style_weights"][i] * np.mean(d ** 2)
    x64 = x.astype(np.float64)
    return total + float(fixed["tv_weight"]) * 0.5 * (np.sum(np.diff(x64, axis=2) ** 2)
                                                       + np.sum(np.diff(x64, axis=3) ** 2))


@pytest.mark.parametrize("spec, shape, core", [
    pytest.param(DEEP, (251, 333), 128, marks=pytest.mark.slow),  # 30 s; max pooling: shallow
    (LossSpec(pooling="avg"), (197, 150), 64),
    (SHALLOW, (251, 333), 96),
    (LossSpec(("relu2_2",), ("relu1_1", "relu2_1", "relu3_1"), "avg"), (250, 333), 128),
], ids=["deep-max-128", "deep-avg-64", "shallow-max-96", "shallow-avg-128"])
def test_tiled_equals_untiled(real_weights, spec, shape, core):
    h, w = shape
    (features, loss, windows, window_loss), content, style, rng = _setup(real_weights, spec, h, w)
    fc, fs = _features(features, content), _features(features, style)
    # targets, computed tiled, are the features graph's
    tc, ts = tiled_features(windows, spec, content, core), tiled_features(windows, spec, style, core)
    for k in fc:
        assert np.abs(tc[k] - fc[k]).max() <= 1e-5 * np.abs(fc[k]).max(), k
        assert np.abs(ts[k] - fs[k]).max() <= 1e-5 * np.abs(fs[k]).max(), k
    fixed = _fixed(spec, fc, fs, h, w)
    x = np.clip(content + rng.normal(0, 30, content.shape), 0, 255).astype(np.float32)
    tiled = TiledEvaluator(windows, window_loss, spec, fixed, (h, w), core)
    assert len(tiled.tiles) > 4
    got, untiled = tiled(x), Evaluator(loss, loss_io(spec), fixed)(x)
    exact = _float64_loss(spec, fixed, _features(features, x), x)
    assert got.loss == pytest.approx(exact, rel=1e-6)
    assert untiled.loss == pytest.approx(exact, rel=1e-4)  # the untiled graph sums in float32
    assert np.linalg.norm(got.grad - untiled.grad) <= 1e-5 * np.linalg.norm(untiled.grad)
    assert set(got.terms) == set(untiled.terms)


def _moves():
    return {name: (io(), _session(build())) for name, (io, build) in WINDOW_MOVES.items()}


def test_window_graphs_cut_and_add_as_numpy_does():
    """The window graphs alone (what a GPU runs so that no window leaves it): each cut is
    the image's slice, and the windows' gradients add up as numpy's overlap-add does."""
    h, w = 37, 53
    rng = np.random.default_rng(3)
    image = rng.normal(size=(1, 3, h, w)).astype(np.float32)
    tiles = plan_tiles(h, w, 16, 16)
    moves = DeviceWindows(_moves(), "cpu", Traffic(), (h, w))
    grad, want = moves.zero(), np.zeros_like(image)
    for t in tiles:
        y0, y1, x0, x1 = t.window
        cut = moves.crop(to_device(image, "cpu"), t).numpy()
        np.testing.assert_array_equal(cut, image[:, :, y0:y1, x0:x1])
        part = rng.normal(size=cut.shape).astype(np.float32)
        grad = moves.add(grad, to_device(part, "cpu"), t)
        want[:, :, y0:y1, x0:x1] += part
    np.testing.assert_allclose(grad.numpy(), want, rtol=1e-6, atol=1e-6)
    assert not moves.zero().numpy().any()  # the shared zero was read, never written


def test_tiled_on_the_window_graphs_is_the_host_s(real_weights):
    """With the window graphs (a GPU's path, run here on the CPU) the objective is the
    one numpy's windows give, to float32 rounding."""
    spec, (h, w), core = SHALLOW, (131, 157), 48
    (features, _, windows, window_loss), content, style, rng = _setup(real_weights, spec, h, w)
    fixed = _fixed(spec, _features(features, content), _features(features, style), h, w)
    x = np.clip(content + rng.normal(0, 30, content.shape), 0, 255).astype(np.float32)
    host = TiledEvaluator(windows, window_loss, spec, fixed, (h, w), core)(x)
    moved = TiledEvaluator(windows, window_loss, spec, fixed, (h, w), core, moves=_moves())(x)
    assert moved.loss == pytest.approx(host.loss, rel=1e-6)
    assert moved.terms == pytest.approx(host.terms, rel=1e-6)
    assert np.linalg.norm(moved.grad - host.grad) <= 1e-6 * np.linalg.norm(host.grad)


@pytest.mark.parametrize("h, w, core", [(251, 333, 96), (17, 500, 128), (160, 160, 16)])
def test_tiles_partition_every_layer_s_positions(h, w, core):
    """Each feature position at every level is owned by exactly one tile; windows start on
    the pooling grid and reach ``halo`` px beyond their core (or the image's edge)."""
    margin = halo(list(DEEP.all_layers))
    tiles = plan_tiles(h, w, core, margin)
    for d in range(5):
        count = np.zeros((h >> d, w >> d))
        for t in tiles:
            m = t.owned((d,))
            rows, cols = m[f"owned_rows_{d}"][0, 0, :, 0], m[f"owned_cols_{d}"][0, 0, 0]
            y0, x0 = t.window[0] >> d, t.window[2] >> d
            count[y0:y0 + len(rows), x0:x0 + len(cols)] += np.outer(rows, cols)
        assert (count == 1).all(), d
    for t in tiles:
        (cy0, cy1, cx0, cx1), (wy0, wy1, wx0, wx1) = t.core, t.window
        assert wy0 % 16 == 0 and wx0 % 16 == 0
        assert wy0 == max(0, cy0 - margin) and wy1 == min(h, cy1 + margin)
        assert wx0 == max(0, cx0 - margin) and wx1 == min(w, cx1 + margin)


def test_halos_are_the_receptive_radii_on_the_grid():
    # receptive fields 156, 84 and 24 px at strides 16, 8 and 4 (../shared/DESIGN.md)
    assert halo(["relu5_1"]) == 80 and halo(["relu4_2"]) == 48 and halo(["relu3_1"]) == 16
    assert all(channels(n) > 0 and downsampling(n) <= 4 for n in DEEP.all_layers)


def test_a_tiled_problem_through_the_api(st, images):
    """prepare(tile_size=…) gives a Problem whose loss_and_grad is the untiled one's, and
    the optimisers run on it unchanged (adam takes lbfgs-onnx's path: the device loop)."""
    whole = st.prepare(images["tubingen"], images["starry_night"], 64)
    tiled = st.prepare(images["tubingen"], images["starry_night"], 64, tile_size=32)
    assert len(tiled.evaluator.tiles) == 4
    x = whole.content[0].transpose(1, 2, 0).astype(np.float64)
    (lw, gw), (lt, gt) = whole.loss_and_grad(x), tiled.loss_and_grad(x)
    assert lt == pytest.approx(lw, rel=1e-4)
    assert np.linalg.norm(gt - gw) <= 1e-4 * np.linalg.norm(gw)
    for optimizer in ("lbfgs", "lbfgs-onnx"):
        r = st.run(tiled, iterations=2, optimizer=optimizer)
        assert r.optimize.loss < r.optimize.initial_loss, optimizer


def test_masks_in_tiles_through_the_api(st, images):
    """prepare(masks=…, tile_size=…): the guided objective, tiled, is the untiled one."""
    ground, sky = EXAMPLES / "tubingen_ground.png", EXAMPLES / "tubingen_sky.png"
    pair = (images["tubingen"], [images["starry_night"], EXAMPLES / "the_scream.jpg"])
    whole = st.prepare(*pair, 64, masks=[ground, sky])
    tiled = st.prepare(*pair, 64, masks=[ground, sky], tile_size=32)
    assert len(tiled.evaluator.tiles) == 4 and tiled.regions == 2
    x = whole.content[0].transpose(1, 2, 0).astype(np.float64)
    (lw, gw), (lt, gt) = whole.loss_and_grad(x), tiled.loss_and_grad(x)
    assert lt == pytest.approx(lw, rel=1e-4)
    assert np.linalg.norm(gt - gw) <= 1e-4 * np.linalg.norm(gw)
    r = st.run(tiled, iterations=2)
    assert r.optimize.loss < r.optimize.initial_loss


@pytest.mark.parametrize("tile, near", [(100, 96), (0, 16), (-32, 16)])
def test_a_tile_size_off_the_grid_names_the_nearest(st, images, tile, near):
    from nst_onnx.errors import BadInput

    with pytest.raises(BadInput, match=f"use {near}"):
        st.prepare(images["tubingen"], images["starry_night"], 64, tile_size=tile)


def test_auto_tiles_only_what_does_not_fit_and_refuses_what_even_tiles_cannot(monkeypatch):
    """The estimate decides: the untiled run where it fits; else the largest tile that
    fits; else one line with the largest size that fits in tiles."""
    from nst_onnx.config import RunOptions
    from nst_onnx.errors import BadInput
    from nst_onnx.run import resources as res

    run = RunOptions()
    untiled = res._untiled_mb("cpu", DEEP, 3072, 4096, 0, 0, run)
    monkeypatch.setattr(res, "available_mb", lambda: untiled / res.HEADROOM + 1)
    assert res.choose_tile("cpu", DEEP, 3072, 4096, 0, 0, run, res.available_mb()) is None
    budget = res.estimate_tiled_mb("cpu", DEEP, 3072, 4096, 1024, 0, run)
    monkeypatch.setattr(res, "available_mb", lambda: budget / res.HEADROOM + 1)
    free = res.available_mb()
    assert res.choose_tile("cpu", DEEP, 3072, 4096, 0, 0, run, free) == 1024
    assert res.choose_tile("cpu", DEEP, 3072, 4096, 0, 1, run, free) is not None  # masks: tiled
    assert res.check_memory("cpu", DEEP, (384, 512), 0, 0, 4096, run, print)["tile_size"] == 1024
    monkeypatch.setattr(res, "available_mb", lambda: res.estimate_tiled_mb(
        "cpu", DEEP, 3072, 4096, 128, 0, run) / 2)
    with pytest.raises(BadInput, match=r"in tiles of 128 px .* use --size \d+ or less"):
        res.check_memory("cpu", DEEP, (384, 512), 0, 0, 4096, RunOptions(history=20), print)


def test_a_tile_size_option_off_the_grid_is_one_line(models_dir, images, tmp_path):
    from typer.testing import CliRunner

    from nst_onnx.cli import app

    r = CliRunner().invoke(app, ["stylize", str(images["tubingen"]), str(images["starry_night"]),
                                 "-o", str(tmp_path / "o.png"), "--tile-size", "100",
                                 "--models", str(models_dir)])
    assert r.exit_code == 2 and "use 96" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_default_history_too_large_for_the_picture_is_lowered_and_said(monkeypatch):
    """Where 20 pairs of a 4096 px image would not fit but fewer would, the history is
    lowered, in one line; a --history given is obeyed or refused, never changed."""
    import dataclasses

    from nst_onnx.config import RunOptions
    from nst_onnx.errors import BadInput
    from nst_onnx.run import resources as res

    run = RunOptions()
    need = res.estimate_tiled_mb("cpu", DEEP, 3072, 4096, 128, 0,
                                 dataclasses.replace(run, history=5))
    monkeypatch.setattr(res, "available_mb", lambda: need / res.HEADROOM + 1)
    notes = []
    info = res.check_memory("cpu", DEEP, (384, 512), 0, 0, 4096, run, notes.append)
    assert info["history"] in (5, 10) and info["tile_size"] is not None
    assert len(notes) == 1 and "L-BFGS history" in notes[0] and "--history" in notes[0]
    with pytest.raises(BadInput, match="or pass --force"):
        res.check_memory("cpu", DEEP, (384, 512), 0, 0, 4096,
                         dataclasses.replace(run, history=20), print)


@pytest.mark.parametrize("spec, shape, core", [
    (LossSpec(("relu2_2",), ("relu1_1", "relu2_1", "relu3_1"), guided=True), (251, 333), 96),
    (LossSpec(pooling="avg", guided=True), (197, 150), 64),
], ids=["shallow-max-96", "deep-avg-64"])
def test_tiled_with_masks_equals_untiled(real_weights, spec, shape, core):
    """Guided Grams in tiles: each region's owned (F⊙T_r)(F⊙T_r)ᵀ summed over the windows,
    normalised by the whole image's ΣT_r²; the gradient pass takes G_r − A_r."""
    h, w = shape
    scales = load_scales()[0] if spec.pooling == "avg" else None
    loss, windows, window_loss = [_session(b(real_weights, spec, scales)) for b in (
        build_loss_graph, build_window_features_graph, build_window_loss_graph)]
    plain = LossSpec(spec.content_layers, spec.style_layers, spec.pooling)
    features = _session(build_features_graph(real_weights, plain, scales))
    rng = np.random.default_rng(1)
    content = rng.uniform(0, 255, (1, 3, h, w)).astype(np.float32)
    styles = [(rng.uniform(0, 255, (1, 3, h - 7, w + 5)) ** 2 / 255 * np.array(tint)[
        None, :, None, None]).astype(np.float32) for tint in ([1, .6, .3], [.3, .6, 1])]
    fc, fs = _features(features, content), [_features(features, s) for s in styles]
    left = np.clip(np.linspace(1.4, -0.4, w), 0, 1)[None, None, None, :] * np.ones((1, 1, h, 1))
    guides = np.concatenate([left, 1 - left]).astype(np.float32)  # soft, overlapping regions
    fixed = _fixed(plain, fc, fs[0], h, w) | {"guides": guides, "inv_sizes": inv_sizes(
        spec, h, w)} | {f"target_gram_{n}": np.stack([f[f"gram_{n}"] for f in fs])
                        for n in spec.style_layers}
    x = np.clip(content + rng.normal(0, 30, content.shape), 0, 255).astype(np.float32)
    tiled = TiledEvaluator(windows, window_loss, spec, fixed, (h, w), core)
    assert len(tiled.tiles) >= 4
    got, untiled = tiled(x), Evaluator(loss, loss_io(spec), fixed)(x)
    # the objective in float64 from the untiled feature maps of every layer
    every = LossSpec(tuple(dict.fromkeys(spec.style_layers + spec.content_layers)),
                     spec.style_layers, spec.pooling)
    maps = _features(_session(build_features_graph(real_weights, every, scales)), x)
    exact = _float64_loss(plain, fixed, {f"features_{n}": maps[f"features_{n}"]
                                         for n in spec.content_layers} | {
        f"gram_{n}": _guided_grams(maps[f"features_{n}"], guides, downsampling(n))
        for n in spec.style_layers}, x)
    assert got.loss == pytest.approx(exact, rel=1e-6)
    assert untiled.loss == pytest.approx(exact, rel=1e-4)  # the untiled graph sums in float32
    for k, v in untiled.terms.items():
        assert got.terms[k] == pytest.approx(v, rel=1e-4, abs=1e-6 * untiled.loss), k
    assert np.linalg.norm(got.grad - untiled.grad) <= 1e-5 * np.linalg.norm(untiled.grad)


def _guided_grams(f: np.ndarray, guides: np.ndarray, d: int) -> np.ndarray:
    """(F⊙T_r)(F⊙T_r)ᵀ/(C·ΣT_r²) in float64, the guides pooled d times (2×2 means, floored)."""
    t = guides.astype(np.float64)
    for _ in range(d):
        r, _, h, w = t.shape
        t = t[:, :, :h // 2 * 2, :w // 2 * 2].reshape(r, 1, h // 2, 2, w // 2, 2).mean((3, 5))
    c = f.shape[1]
    fr = (f.astype(np.float64) * t).reshape(len(t), c, -1)
    return fr @ fr.transpose(0, 2, 1) / (c * np.sum(t * t, axis=(1, 2, 3)))[:, None, None]


def test_a_window_out_of_memory_keeps_the_best_image_and_names_the_remedy(st, images):
    """onnxruntime's allocation failure in a window (as it reads on the CPU and on a GPU)
    stops the run like any stop: the best image so far is the result, the error one line."""
    from nst_onnx.run.cuda import DeviceOutOfMemory

    tiled = st.prepare(images["tubingen"], images["starry_night"], 64, tile_size=32)
    ev, calls = tiled.evaluator, {"n": 0}
    real = ev.loss_session

    class Failing:
        def __getattr__(self, name):
            return getattr(real, name)

        def run_with_iobinding(self, binding, options=None):
            calls["n"] += 1
            if calls["n"] > 4 * 6:  # six evaluations of four windows, then no more memory
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to "
                                   "allocate memory for requested buffer of size 123456")
            return real.run_with_iobinding(binding, options)
    ev.loss_session = Failing()
    r = st.run(tiled, iterations=50, optimizer="lbfgs")
    e = r.optimize.error
    assert isinstance(e, DeviceOutOfMemory) and "--tile-size" in str(e) and "\n" not in str(e)
    assert r.optimize.loss < r.optimize.initial_loss  # the best image so far, not the start
    assert r.image is not None


def test_auto_tiles_keep_memory_to_spare_where_it_costs_little_time(monkeypatch):
    """Of the tiles that fit, auto takes the smallest whose windows cost at most 10% more
    pixels than the cheapest's, and the default history is lowered before tiles go below
    1024 px: at 4096×3072 with 23.5 GB free, 10 pairs in tiles of 1024 (~20.7 GB), not 20
    pairs in tiles of 768 (1.38× the pixels) nor 10 in tiles of 1536 (1.13×, ~4 GB more)."""
    import dataclasses

    from nst_onnx.config import RunOptions
    from nst_onnx.run import resources as res

    shares = {t: res.window_share(DEEP, 3072, 4096, t) for t in (2048, 1536, 1024, 768)}
    assert shares[1536] <= 1.1 * shares[2048] < shares[1024] <= 1.1 * shares[1536] < shares[768]
    run = dataclasses.replace(RunOptions(), history=10)
    every_tile_fits = res.estimate_tiled_mb("cpu", DEEP, 3072, 4096, 2048, 0, run) / res.HEADROOM
    assert res.choose_tile("cpu", DEEP, 3072, 4096, 0, 0, run, every_tile_fits + 1) == 1536
    monkeypatch.setattr(res, "available_mb", lambda: 23500.0)
    notes = []
    info = res.check_memory("cpu", DEEP, (384, 512), 0, 0, 4096, RunOptions(), notes.append)
    assert (info["tile_size"], info["history"]) == (1024, 10) and len(notes) == 1
