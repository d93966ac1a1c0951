"""`nst video` at 48 px: the temporal graph against the plain one plus the term's closed form,
the flow's reliability on a known motion, a 4-frame clip end to end, interrupted and resumed
with nothing redone, and every bad input as one line with exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

cv2 = pytest.importorskip("cv2", reason="nst video needs opencv-python-headless ([video])")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from camera_clip import camera_clip, true_flow  # noqa: E402

from nst_onnx.cli import app  # noqa: E402
from nst_onnx.config import LossWeights, RunOptions, VideoOptions  # noqa: E402
from nst_onnx.errors import Interrupted  # noqa: E402
from nst_onnx.problem import Temporal  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()
SIZE = (48, 36)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    for i, f in enumerate(camera_clip(Image.open(EXAMPLES / "tubingen.jpg"), 4, SIZE), 1):
        Image.fromarray(f).save(d / f"f{i}.png")  # f1 … f4: natural order, not f1, f10
    return d


def test_temporal_graph_is_the_loss_plus_the_term(st, images):
    """The video twin against the plain loss graph and the term's closed form:
    loss + wt·Σc(x−ω)²/D, gradient + 2·wt·c⊙(x−ω)/D (a soft, partly zero c)."""
    plain = st.prepare(images["tubingen"], images["starry_night"], size=48)
    h, w = plain.shape[:2]
    rng = np.random.default_rng(0)
    warped = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    c = rng.uniform(0, 1, (h, w)).astype(np.float32)
    c[:, : w // 3] = 0
    wt = 1e3
    from nst_onnx.problem import prepare

    video = prepare(st.engine, images["tubingen"], images["starry_night"], 48,
                    temporal=Temporal(warped, c, wt))
    x = rng.uniform(0, 255, (h, w, 3))
    a, b = plain.evaluate(x.transpose(2, 0, 1)), video.evaluate(x.transpose(2, 0, 1))
    x32 = x.astype(np.float32)
    d = 3 * h * w
    term = wt * np.sum(c[..., None] * (x32 - warped) ** 2, dtype=np.float64) / d
    assert b.terms["temporal_loss"] == pytest.approx(term, rel=1e-5)
    assert b.loss == pytest.approx(a.loss + term, rel=1e-5)
    want = a.grad[0] + (2 * wt / d * c[..., None] * (x32 - warped)).transpose(2, 0, 1)
    np.testing.assert_allclose(b.grad[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_the_temporal_term_in_tiles_is_the_untiled_one(st, images):
    """A frame too large for the memory is tiled with its temporal term: the windows give
    the style, content and TV terms, the term is added on the whole image (temporal_add)."""
    from nst_onnx.problem import prepare

    h, w = st.prepare(images["tubingen"], images["starry_night"], size=64).shape[:2]
    rng = np.random.default_rng(1)
    warped = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    c = rng.uniform(0, 1, (h, w)).astype(np.float32)
    c[: h // 2] = 0
    frame = Temporal(warped, c, 1e3)
    whole, tiled = [prepare(st.engine, images["tubingen"], images["starry_night"], 64,
                            tile_size=t, temporal=frame) for t in (None, 32)]
    assert len(tiled.evaluator.tiles) == 4
    x = rng.uniform(0, 255, (3, h, w))
    a, b = whole.evaluate(x), tiled.evaluate(x)
    assert b.loss == pytest.approx(a.loss, rel=1e-4)  # the untiled graph sums in float32
    assert b.terms == pytest.approx(a.terms, rel=1e-4)
    assert b.terms["temporal_loss"] > 1e-3 * b.loss  # the term is there, not lost in the sum
    assert np.linalg.norm(b.grad - a.grad) <= 1e-5 * np.linalg.norm(a.grad)


def test_reliability_on_a_known_motion():
    """A pan: the flow matches the true motion, and what leaves the frame is not trusted."""
    from nst_onnx.video.flow import dis_flow, reliability

    frames = camera_clip(Image.open(EXAMPLES / "tubingen.jpg"), 3, (96, 72))
    f, b = dis_flow(frames[2], frames[1], "medium"), dis_flow(frames[1], frames[2], "medium")
    t = true_flow(2, Image.open(EXAMPLES / "tubingen.jpg").size, (96, 72))
    assert np.abs(f - t)[8:-8, 8:-8].mean() < 0.25 * np.abs(t).mean() + 0.05
    c = reliability(f, b)
    assert 0.7 < c.mean() < 1.0
    shifted = np.zeros((72, 96, 2), np.float32)
    shifted[..., 0] = 5.0  # everything moves 5 px right: the last 5 columns leave the frame
    assert reliability(shifted, -shifted)[:, -4:].max() == 0


def _run(st, clip_dir, out, **kw):
    from nst_onnx.video import stylize_video

    return stylize_video(st.engine, clip_dir, [EXAMPLES / "starry_night.jpg"],
                         RunOptions(size=48, iterations=4, checkpoint_every=0), LossWeights(),
                         VideoOptions(), output=out, **kw)


def test_clip_end_to_end_interrupted_and_resumed(st, clip_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    calls = {"n": 0}

    def stop_in_frame_3(p):
        calls["n"] += 1
        if calls["n"] == 2 * 4 + 2:  # frames 1 and 2 take 4 iterations each
            raise Interrupted(130)
    first = _run(st, clip_dir, out, callback=stop_in_frame_3)
    frames = tmp_path / "clip_frames"
    assert first.interrupted is not None and len(first.records) == 2 and not out.exists()
    assert (frames / ".frame_000003.png.ckpt.npz").exists()  # the frame in progress
    kept = {n: (frames / n).read_bytes() for n in ("frame_000001.png", "frame_000002.png")}
    assert not first.records[0]["temporal"] and first.records[1]["temporal"]

    second = _run(st, clip_dir, out)
    assert [r["status"] for r in second.records] == ["skipped", "skipped", "done", "done"]
    assert all((frames / n).read_bytes() == b for n, b in kept.items())  # nothing redone
    assert not (frames / ".frame_000003.png.ckpt.npz").exists()
    lines = (frames / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [1, 2, 3, 4]
    cap = cv2.VideoCapture(str(out))
    n = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        assert img.shape[:2] == (SIZE[1], SIZE[0])
        n += 1
    assert n == 4
    with Image.open(frames / "frame_000004.png") as img:
        meta = json.loads(img.info["nst-onnx"])
    assert meta["fingerprint"] == second.records[3]["fingerprint"] and meta["temporal"]


def nst(models_dir, *args):
    return runner.invoke(app, ["video", *args, "--models", str(models_dir)])


def _bad(tmp_path: Path, case: str) -> list[str]:
    style = str(EXAMPLES / "starry_night.jpg")
    out = str(tmp_path / "o.mp4")
    if case == "not a video":
        (tmp_path / "x.mp4").write_text("not a video")
        return [str(tmp_path / "x.mp4"), style, "-o", out]
    if case == "no frames":
        (tmp_path / "empty").mkdir()
        return [str(tmp_path / "empty"), style, "-o", out]
    if case == "sizes differ":
        (tmp_path / "f").mkdir()
        Image.new("RGB", (48, 36)).save(tmp_path / "f" / "1.png")
        Image.new("RGB", (40, 36)).save(tmp_path / "f" / "2.png")
        return [str(tmp_path / "f"), style, "-o", out]
    d = tmp_path / "ok"
    d.mkdir()
    for i in range(2):
        Image.new("RGB", (48, 36), (i * 50, 80, 90)).save(d / f"{i}.png")
    return {"codec": [str(d), style, "-o", str(tmp_path / "o.xyz")],
            "start": [str(d), style, "-o", out, "--start", "5"],
            "weight": [str(d), style, "-o", out, "--temporal-weight", "-1"],
            "nowhere": [str(d), style],
            "image": [str(d / "0.png"), style, "-o", out]}[case]


@pytest.mark.parametrize("case, message", [
    ("not a video", "cannot read"), ("no frames", "has no frames"),
    ("sizes differ", "the frames differ in size"), ("codec", "cannot write .xyz video"),
    ("start", "--start 5 is beyond the end"), ("weight", "--temporal-weight must be"),
    ("nowhere", "give an output video"), ("image", "is one image, not a video"),
])
def test_bad_input_is_one_line_exit_2_before_any_frame(models_dir, tmp_path, case, message):
    r = nst(models_dir, *_bad(tmp_path, case), "--size", "48", "--iterations", "1")
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*_frames/frame_*"))


def test_corrupt_frame_stops_the_run_keeping_the_earlier(models_dir, clip_dir, tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in (1, 2, 3):
        (d / f"f{i}.png").write_bytes((clip_dir / f"f{i}.png").read_bytes())
    data = (d / "f3.png").read_bytes()
    (d / "f3.png").write_bytes(data[:60] + b"\0" * (len(data) - 60))  # header whole, data not
    r = nst(models_dir, str(d), str(EXAMPLES / "starry_night.jpg"), "--frames-dir",
            str(tmp_path / "out"), "--size", "48", "--iterations", "2", "--temporal-weight", "0")
    assert r.exit_code == 2, r.output
    assert "f3.png is not a readable image" in r.output and "frames 1–2 are kept" in r.output
    assert sorted(p.name for p in (tmp_path / "out").glob("frame_*")) == \
        ["frame_000001.png", "frame_000002.png"]


def test_long_term_frames_count_closest_first():
    """--temporal-frames 1,2: the farther frame counts only where the closer one is not
    trusted, and the single (c, ω) pair has the gradient of the sum of both terms."""
    from nst_onnx.video.flow import carry

    h, w = 12, 16
    still = np.zeros((h, w, 2), np.float32)
    near = np.full((h, w, 3), 100, np.float32)
    far = np.full((h, w, 3), 200, np.float32)
    moving = still.copy()
    moving[:, :8, 0] = 40.0  # the left half of the closest frame leaves the picture: untrusted
    c = carry(np.zeros((h, w, 3), np.uint8), [(moving, -moving, near), (still, still, far)])
    assert np.allclose(c.reliability, 1.0, atol=1e-6)  # every pixel seen by one of them
    assert np.allclose(c.warped[:, -3:], 100) and np.allclose(c.warped[:, :3], 200)
    x = np.random.default_rng(1).uniform(0, 255, (h, w, 3)).astype(np.float32)
    from nst_onnx.video.flow import blurred, reliability

    c1 = blurred(reliability(moving, -moving))
    c2 = np.maximum(blurred(reliability(still, still)) - c1, 0)
    both = 2 * (c1[..., None] * (x - near) + c2[..., None] * (x - far))
    np.testing.assert_allclose(2 * c.reliability[..., None] * (x - c.warped), both, atol=1e-3)


@pytest.mark.parametrize("mode", ["masks", "luminance"])
def test_the_temporal_term_with_masks_and_with_luminance(st, clip_dir, tmp_path, mode):
    """Frames 2 and 3 carry the temporal term through the guided graph (two styles by masks)
    and in luminance mode (which optimises a grey image: ω and the start are made grey too).
    Each later frame starts from ω where it is trusted, so its first temporal term is near zero
    against the loss; a start or an ω left in colour would make it large."""
    from nst_onnx.video import stylize_video

    styles = [EXAMPLES / "starry_night.jpg"] + ([EXAMPLES / "the_scream.jpg"] if mode == "masks"
                                                else [])
    masks = [EXAMPLES / "tubingen_ground.png", EXAMPLES / "tubingen_sky.png"] \
        if mode == "masks" else None
    firsts: list[dict] = []

    def first_terms(p):
        if p.iteration == 1:
            firsts.append(dict(p.terms, loss=p.loss))
    r = stylize_video(st.engine, clip_dir, styles, RunOptions(size=48, iterations=4,
                      checkpoint_every=0), LossWeights(preserve_colors="luminance" if
                      mode == "luminance" else "none"), VideoOptions(end=3),
                      frames_dir=tmp_path / "frames", masks=masks, callback=first_terms)
    assert [x["status"] for x in r.records] == ["done"] * 3
    assert [x["temporal"] for x in r.records] == [False, True, True]
    assert "temporal_loss" not in firsts[0]
    for later in firsts[1:]:
        # observed 7e-6 (masks) and 1.2e-4 (luminance); 1.7e-2 with luminance's start in colour
        assert 0 < later["temporal_loss"] < 1e-3 * later["loss"], later
    for x in r.records[1:]:
        assert np.isfinite(x["final_terms"]["temporal_loss"])
    with Image.open(tmp_path / "frames" / "frame_000003.png") as img:
        assert img.size == SIZE and img.mode == "RGB"


def test_a_batch_of_clips_each_in_its_worker_failing_alone(models_dir, clip_dir, tmp_path):
    """nst batch --videos: a folder of frames and a video file run in two worker processes;
    an unreadable clip fails alone (exit 2); a re-run redoes no frame."""
    clip = tmp_path / "pan.mp4"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, SIZE)
    for i in range(1, 4):
        w.write(cv2.cvtColor(np.asarray(Image.open(clip_dir / f"f{i}.png")), cv2.COLOR_RGB2BGR))
    w.release()
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    args = ["batch", "--videos", f"{clip_dir},{clip},{tmp_path / 'broken.mp4'}", "--styles",
            str(EXAMPLES / "starry_night.jpg"), "-o", str(out), "--size", "48",
            "--iterations", "3", "--workers", "2", "--threads", "1", "--models",
            str(models_dir), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    videos = json.loads(r.stdout.strip().splitlines()[-1])["videos"]
    assert [v["status"] for v in videos] == ["done", "done", "failed"]
    assert "cannot read" in videos[2]["reason"]
    assert [v["frames_stylised"] for v in videos[:2]] == [4, 3]
    for v in videos[:2]:
        cap = cv2.VideoCapture(v["output"])
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == v["frames"]
    again = json.loads(runner.invoke(app, args).stdout.strip().splitlines()[-1])["videos"]
    assert [(v["frames_stylised"], v["frames_kept"]) for v in again[:2]] == [(0, 4), (0, 3)]
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(x)["video"] for x in lines)
