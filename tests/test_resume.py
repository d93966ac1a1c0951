"""Checkpoints: a stopped run continues where it stood and ends at the requested iteration
count; a checkpoint of other settings, or a corrupt one, is never used."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nst_onnx.cli import app
from nst_onnx.errors import Interrupted
from nst_onnx.io.checkpoint import CheckpointError, checkpoint_path


def _stop_at(n):
    def callback(p):
        if p.iteration == n:
            raise Interrupted(130)
    return callback


@pytest.mark.parametrize("optimizer", ["lbfgs", "lbfgs-onnx", "adam"])
def test_stopped_run_resumes_to_the_requested_count(st, images, tmp_path, optimizer):
    ckpt = tmp_path / ".out.png.ckpt.npz"
    args = dict(size=48, iterations=12, optimizer=optimizer, lr=4.0)
    r1 = st.transfer(images["tubingen"], images["starry_night"], checkpoint=ckpt,
                     checkpoint_every=1e-9, callback=_stop_at(5), **args)
    assert r1.optimize.interrupted is not None and ckpt.exists()
    r2 = st.transfer(images["tubingen"], images["starry_night"], checkpoint=ckpt,
                     resume="require", **args)
    s = r2.summary()
    assert s["iterations"] == 12 and s["resumed"]["iterations_before"] == 5
    assert r2.scales[0]["resumed_at"] == 5 and r2.optimize.iterations == 7
    assert not ckpt.exists()  # removed on success
    assert s["final_loss"] < r1.optimize.loss


def test_device_optimiser_resumes_its_full_state(st, images, tmp_path):
    """lbfgs-onnx with its history restored continues exactly as the unbroken run."""
    ckpt = tmp_path / "c.npz"
    args = dict(size=40, iterations=10, optimizer="lbfgs-onnx")
    whole = st.transfer(images["tubingen"], images["starry_night"], **args)
    st.transfer(images["tubingen"], images["starry_night"], checkpoint=ckpt,
                checkpoint_every=1e-9, callback=_stop_at(6), **args)
    resumed = st.transfer(images["tubingen"], images["starry_night"], checkpoint=ckpt,
                          resume="require", **args)
    assert resumed.optimize.loss == pytest.approx(whole.optimize.loss, rel=1e-3)


def test_other_settings_or_corrupt_checkpoints_are_refused_or_ignored(st, images, tmp_path):
    ckpt = tmp_path / "c.npz"
    st.transfer(images["tubingen"], images["starry_night"], size=40, iterations=6,
                checkpoint=ckpt, checkpoint_every=1e-9, callback=_stop_at(3))
    with pytest.raises(CheckpointError, match="other settings"):
        st.transfer(images["tubingen"], images["starry_night"], size=40, iterations=6,
                    style_weight=50.0, checkpoint=ckpt, resume="require")
    notes = []
    st.log, log = notes.append, st.log
    try:
        r = st.transfer(images["tubingen"], images["starry_night"], size=40, iterations=6,
                        style_weight=50.0, checkpoint=ckpt, resume="auto")
    finally:
        st.log = log
    assert r.summary()["iterations"] == 6 and "resumed" not in r.summary()
    assert any("starting afresh" in n for n in notes)
    ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="unreadable"):
        st.transfer(images["tubingen"], images["starry_night"], size=40, iterations=6,
                    checkpoint=ckpt, resume="require")


def test_resume_without_a_checkpoint_is_one_line_exit_2(models_dir, images, tmp_path):
    r = CliRunner().invoke(app, ["stylize", str(images["tubingen"]), str(images["starry_night"]),
                                 "-o", str(tmp_path / "o.png"), "--size", "32", "--resume",
                                 "--models", str(models_dir)])
    assert r.exit_code == 2 and "nothing to resume" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_kill_9_then_resume_finishes_the_run(models_dir, images, tmp_path):
    out = tmp_path / "k.png"
    cmd = [sys.executable, "-m", "nst_onnx.cli", "stylize", str(images["tubingen"]),
           str(images["starry_night"]), "-o", str(out), "--size", "48", "--iterations", "80",
           "--checkpoint-every", "0.2", "--models", str(models_dir), "--threads", "1",
           "--quiet"]
    proc = subprocess.Popen(cmd)
    ckpt = checkpoint_path(out)
    try:
        deadline = time.time() + 60
        while not ckpt.exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not out.exists() and ckpt.exists()
    before = int(json.loads(str(np.load(ckpt)["meta"]))["done"])
    assert 0 < before < 80
    r = subprocess.run([*cmd[:-1], "--json", "--resume"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["iterations"] == 80 and s["resumed"]["iterations_before"] >= before
    assert out.exists() and not ckpt.exists()


def test_a_checkpoint_in_the_on_disk_layout_of_format_1_resumes(st, images, tmp_path):
    """The file layout checkpoints have had since format 1 (written here with numpy alone,
    not Checkpoint.save; S and Y holding only the filled rows, as before the fixed-row
    history): a run resumed from it ends as the unbroken run does."""
    ckpt = tmp_path / "c.npz"
    args = dict(size=40, iterations=10, optimizer="lbfgs-onnx")
    whole = st.transfer(images["tubingen"], images["starry_night"], **args)
    st.transfer(images["tubingen"], images["starry_night"], checkpoint=ckpt,
                checkpoint_every=1e-9, callback=_stop_at(6), **args)
    with np.load(ckpt, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in z.files}
    assert set(meta) == {"format", "fingerprint", "scale", "iteration", "done", "optimizer"}
    assert meta["format"] == 1 and meta["iteration"] == 6
    k = len(arrays["state_hist_sy"])
    arrays["state_S"], arrays["state_Y"] = arrays["state_S"][-k:], arrays["state_Y"][-k:]
    ckpt.unlink()
    np.savez(ckpt, **arrays)
    resumed = st.transfer(images["tubingen"], images["starry_night"], checkpoint=ckpt,
                          resume="require", **args)
    assert resumed.summary()["resumed"]["iterations_before"] == 6
    assert resumed.optimize.loss == pytest.approx(whole.optimize.loss, rel=1e-3)


def _full_disk_at(out: Path, monkeypatch):
    """Saving ``out`` fails as on a full disk (every other save works); returns the real
    save_image, to put back."""
    import nst_onnx.io.images as image_io

    real = image_io.save_image

    def full_disk(img, path, metadata=None, **encoding):
        if Path(path) == out:
            raise OSError(28, "No space left on device")
        return real(img, path, metadata, **encoding)
    monkeypatch.setattr(image_io, "save_image", full_disk)
    return real


def test_the_checkpoint_outlives_a_failed_final_save(models_dir, images, tmp_path, monkeypatch):
    """A full disk (or a kill) while the output is written must leave the run resumable:
    the checkpoint goes only once the output is in place."""
    import nst_onnx.io.images as image_io

    out = tmp_path / "o.png"
    real = _full_disk_at(out, monkeypatch)
    args = ["stylize", str(images["tubingen"]), str(images["starry_night"]), "-o", str(out),
            "--size", "40", "--iterations", "8", "--checkpoint-every", "1e-9",
            "--models", str(models_dir)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and not out.exists()
    assert "No space left" in r.output and str(checkpoint_path(out)) in r.output, r.output
    with np.load(checkpoint_path(out)) as z:  # the ended run itself, not an earlier moment
        meta = json.loads(str(z["meta"]))
    assert meta["iteration"] == 8 and meta["stop_reason"]
    monkeypatch.setattr(image_io, "save_image", real)
    r = CliRunner().invoke(app, [*args, "--resume", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output.strip().splitlines()[-1])
    assert s["iterations"] == 8 and s["scales"][0]["iterations"] == 0  # only the save was left
    assert out.exists() and not checkpoint_path(out).exists()


def test_without_a_checkpoint_a_failed_final_save_writes_to_the_temporary_folder(
        models_dir, images, tmp_path, monkeypatch):
    out, spare = tmp_path / "o.png", tmp_path / "spare"
    spare.mkdir()
    monkeypatch.setenv("TMPDIR", str(spare))
    monkeypatch.setattr("tempfile.tempdir", None)
    _full_disk_at(out, monkeypatch)
    r = CliRunner().invoke(app, ["stylize", str(images["tubingen"]), str(images["starry_night"]),
                                 "-o", str(out), "--size", "32", "--iterations", "2",
                                 "--checkpoint-every", "0", "--models", str(models_dir)])
    kept = list(spare.glob("nst-onnx-*o.png"))
    assert r.exit_code == 1 and len(kept) == 1 and str(kept[0]) in r.output, r.output


@pytest.mark.parametrize("damage, why", [
    (dict(meta={"scale": -1}), "whole numbers"),
    (dict(meta={"iteration": 5.5}), "whole numbers"),
    (dict(meta={"iteration": 99, "done": 3}), "more iterations"),
    (dict(meta={"optimizer": "sgd"}), "unknown optimiser"),
    (dict(x=np.full((3, 4, 4), 1e30, np.float32)), "pixels outside"),
    (dict(x=np.zeros((4, 4), np.float32)), "no image"),
    (dict(state_S=np.full((2, 7), np.nan, np.float32)), "not finite"),
    (dict(state_S=np.zeros((2, 7), np.float32)), "L-BFGS history"),
])
def test_a_checkpoint_with_the_right_fingerprint_but_damaged_contents_is_refused(
        st, images, tmp_path, damage, why):
    """The fingerprint is public (PNG metadata, batch manifests): it proves nothing about
    the rest of the file, which is checked before anything is used."""
    ckpt = tmp_path / "c.npz"
    args = dict(size=40, iterations=6, optimizer="lbfgs-onnx")
    st.transfer(images["tubingen"], images["starry_night"], checkpoint=ckpt,
                checkpoint_every=1e-9, callback=_stop_at(3), **args)
    with np.load(ckpt, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"])) | damage.pop("meta", {})
    arrays |= damage | {"meta": np.array(json.dumps(meta))}
    ckpt.unlink()
    np.savez(ckpt, **arrays)
    with pytest.raises(CheckpointError, match=why):
        st.transfer(images["tubingen"], images["starry_night"], checkpoint=ckpt,
                    resume="require", **args)


def test_a_checkpoint_larger_than_its_run_is_refused_before_it_is_inflated(st, images, tmp_path):
    """A few MB of zeros that would inflate to far more than a 40 px run ever writes."""
    import zipfile

    ckpt = tmp_path / "c.npz"
    args = dict(size=40, iterations=6)
    st.transfer(images["tubingen"], images["starry_night"], checkpoint=ckpt,
                checkpoint_every=1e-9, callback=_stop_at(3), **args)
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (50_000_000,)
    with zipfile.ZipFile(ckpt, "a", zipfile.ZIP_DEFLATED) as z, z.open("state_extra.npy", "w",
                                                                      force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for _ in range(50):
            f.write(bytes(4_000_000))
    assert ckpt.stat().st_size < 1_000_000
    with pytest.raises(CheckpointError, match="more than a run of this size writes"):
        st.transfer(images["tubingen"], images["starry_night"], checkpoint=ckpt,
                    resume="require", **args)


def test_a_fifo_as_checkpoint_is_refused_in_one_line(st, images, tmp_path):
    import os

    ckpt = tmp_path / "c.npz"
    os.mkfifo(ckpt)
    with pytest.raises(CheckpointError, match="FIFO"):
        st.transfer(images["tubingen"], images["starry_night"], size=40, iterations=2,
                    checkpoint=ckpt, resume="require")


def test_a_checkpoint_that_cannot_be_written_is_a_warning(st, images, tmp_path, monkeypatch):
    from nst_onnx.io import checkpoint

    def full_disk(self, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint.Checkpoint, "save", full_disk)
    notes = []
    st.log, log = notes.append, st.log
    try:
        r = st.transfer(images["tubingen"], images["starry_night"], size=40, iterations=4,
                        checkpoint=tmp_path / "c.npz", checkpoint_every=1e-9)
    finally:
        st.log = log
    assert r.optimize.iterations == 4 and r.optimize.error is None
    assert any("could not write the checkpoint" in n for n in notes)


def test_a_checkpoint_that_takes_long_to_save_is_written_less_often():
    """Saving costs at most 5% of the run: after a save of 10 s the next waits 200 s of
    work, not the 60 s asked for; a quick save keeps the asked interval."""
    from nst_onnx.run.progress import CheckpointTimer

    now = [0.0]
    timer = CheckpointTimer(60.0, clock=lambda: now[0])
    now[0] = 59.0
    assert not timer.due()
    now[0] = 60.0
    assert timer.due()

    def save():
        now[0] += 10.0
    timer.timed(save)
    now[0] += 199.0
    assert not timer.due()
    now[0] += 1.0
    assert timer.due()
    timer.timed(lambda: None)
    now[0] += 60.0
    assert timer.due()
    assert not CheckpointTimer(0.0, clock=lambda: now[0]).due()


def test_a_lazy_state_is_written_one_array_at_a_time(tmp_path):
    """At print sizes S and Y are gigabytes each: the checkpoint fetches one, writes it and
    lets it go before fetching the next, and reads back as np.savez's layout did."""
    import gc
    import weakref

    from nst_onnx.io.checkpoint import Checkpoint, load_checkpoint
    from nst_onnx.run.progress import Lazy

    alive = []

    def fetch(value):
        def get():
            gc.collect()
            assert not any(r() is not None for r in alive), "an earlier array is still held"
            a = np.full((2, 60), value, np.float32)
            alive.append(weakref.ref(a))
            return a
        return get
    x = np.full((3, 4, 5), 7.0, np.float32)
    state = Lazy(S=fetch(1.0), Y=fetch(2.0), hist_sy=np.eye(2), hist_yy=np.eye(2),
                 gamma=np.array(0.5))
    path = tmp_path / ".o.png.ckpt.npz"
    Checkpoint("fp", 0, 3, 3, "lbfgs-onnx", x, state).save(path)
    back = load_checkpoint(path, "fp")
    assert back.iteration == 3 and np.array_equal(back.x, x)
    assert (back.state["S"] == 1).all() and (back.state["Y"] == 2).all()
    assert float(back.state["gamma"]) == 0.5 and len(alive) == 2


def test_a_ring_history_is_written_row_by_row_oldest_first(tmp_path, monkeypatch):
    """S and Y kept as a ring (rows in the order the pairs came) go to the checkpoint row by
    row, oldest first after the unfilled rows, never gathered into a copy; they read back
    as one array in the layout a resume expects."""
    from nst_onnx.io.checkpoint import Checkpoint, load_checkpoint
    from nst_onnx.run.progress import Lazy, Rows

    ring = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    want = np.zeros((4, 6), np.float32)
    want[1:] = ring[[2, 3, 0]]  # three pairs, the oldest in row 2

    def gathered(*_, **__):
        raise AssertionError("the ring was gathered into a copy")
    state = Lazy(S=lambda: Rows(ring, [2, 3, 0], 4), Y=lambda: Rows(2 * ring, [2, 3, 0], 4),
                 hist_sy=np.eye(3), hist_yy=np.eye(3), gamma=np.array(0.5))
    monkeypatch.setattr(Rows, "__array__", gathered)
    path = tmp_path / ".o.png.ckpt.npz"
    Checkpoint("fp", 0, 3, 3, "lbfgs-onnx", np.full((3, 2, 1), 7.0), state).save(path)
    back = load_checkpoint(path, "fp")
    np.testing.assert_array_equal(back.state["S"], want)
    np.testing.assert_array_equal(back.state["Y"], 2 * want)
