"""`nst batch`: grids and jobs files, the manifest, idempotent re-runs, jobs failing alone,
resuming after kill -9, worker processes and Ray — outputs pixel-identical to `nst stylize`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nst_onnx.cli import app

ARGS = ["--size", "40", "--iterations", "4", "--threads", "1", "--checkpoint-every", "0"]


@pytest.fixture()
def inputs(tmp_path):
    """Two contents and two styles (small copies of the examples) in folders."""
    from conftest import EXAMPLES

    c, s = tmp_path / "contents", tmp_path / "styles"
    c.mkdir()
    s.mkdir()
    for src, dst in [("tubingen.jpg", c / "tub.png"), ("starry_night.jpg", c / "night.png"),
                     ("the_scream.jpg", s / "scream.png"), ("starry_night.jpg", s / "stars.jpg")]:
        img = Image.open(EXAMPLES / src)
        img.thumbnail((96, 96))
        img.save(dst)
    return c, s


def nst(models_dir, *args):
    return CliRunner().invoke(app, [*args, "--models", str(models_dir)])


def manifest(outdir):
    return [json.loads(line) for line in (outdir / "manifest.jsonl").read_text().splitlines()]


def test_grid_manifest_sheet_and_idempotent_rerun(models_dir, inputs, tmp_path):
    c, s = inputs
    out = tmp_path / "out"
    (c / "README.txt").write_text("not an image")
    r = nst(models_dir, "batch", str(c), "--styles", str(s), "-o", str(out), *ARGS,
            "--workers", "1")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["night__scream.png", "night__stars.png", "tub__scream.png",
                     "tub__stars.png"]
    recs = manifest(out)
    assert [x["status"] for x in recs] == ["done"] * 4
    rec = recs[0]
    for key in ("content_sha256", "styles_sha256", "settings", "fingerprint", "model_sha256",
                "initial_loss", "final_loss", "seconds", "output_sha256"):
        assert rec[key] is not None, key
    assert rec["final_loss"] < rec["initial_loss"]
    assert (out / "contact_sheet.jpg").exists()
    assert "1 non-image files ignored" in r.output
    t = time.perf_counter()
    r = nst(models_dir, "batch", str(c), "--styles", str(s), "-o", str(out), *ARGS)
    assert r.exit_code == 0 and time.perf_counter() - t < 5, r.output
    assert [x["status"] for x in manifest(out)[4:]] == ["skipped"] * 4
    r = nst(models_dir, "batch", str(c), "--styles", str(s), "-o", str(out), *ARGS, "--redo",
            "--workers", "1")
    assert [x["status"] for x in manifest(out)[8:]] == ["done"] * 4
    # the manifest gone, the PNG metadata still says what made each output
    (out / "manifest.jsonl").unlink()
    nst(models_dir, "batch", str(c), "--styles", str(s), "-o", str(out), *ARGS)
    assert [x["status"] for x in manifest(out)] == ["skipped"] * 4


def test_outputs_are_those_of_nst_stylize(models_dir, inputs, tmp_path):
    c, s = inputs
    out = tmp_path / "out"
    r = nst(models_dir, "batch", str(c / "tub.png"), "--styles", str(s / "scream.png"), "-o",
            str(out), *ARGS, "--seed", "3", "--init", "noise")
    assert r.exit_code == 0, r.output
    single = tmp_path / "single.png"
    r = nst(models_dir, "stylize", str(c / "tub.png"), str(s / "scream.png"), "-o", str(single),
            *ARGS, "--seed", "3", "--init", "noise")
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(out / "tub__scream.png")),
                          np.asarray(Image.open(single)))


def test_a_corrupt_input_fails_alone(models_dir, inputs, tmp_path):
    c, s = inputs
    (c / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    out = tmp_path / "out"
    r = nst(models_dir, "batch", str(c), "--styles", str(s / "scream.png"), "-o", str(out),
            *ARGS, "--workers", "1")
    assert r.exit_code == 2, r.output
    recs = {x["content"].rsplit("/", 1)[-1]: x for x in manifest(out)}
    assert recs["broken.jpg"]["status"] == "failed"
    assert "not a readable image" in recs["broken.jpg"]["reason"]
    assert recs["tub.png"]["status"] == recs["night.png"]["status"] == "done"
    assert "2 done, 0 skipped, 1 failed" in r.output


def test_jobs_file_with_per_job_settings(models_dir, inputs, tmp_path):
    c, s = inputs
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("content,style,size,seed,output\n"
                    f"{c / 'tub.png'},{s / 'scream.png'},32,1,a.png\n"
                    f"{c / 'night.png'},{s / 'stars.jpg'},48,2,\n")
    out = tmp_path / "out"
    r = nst(models_dir, "batch", "--jobs-file", str(jobs), "-o", str(out), *ARGS[2:])
    assert r.exit_code == 0, r.output
    assert max(Image.open(out / "a.png").size) == 32
    assert max(Image.open(out / "night__stars.png").size) == 48
    jobs.write_text("content,style,sizze\n" f"{c / 'tub.png'},{s / 'scream.png'},32\n")
    r = nst(models_dir, "batch", "--jobs-file", str(jobs), "-o", str(out))
    assert r.exit_code == 2 and "row 2: unknown setting 'sizze'" in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["EMPTY", "--styles", "STYLES"], "has no image files"),
    (["CONTENTS", "--styles", "STYLES", "-o", "/proc/nope"], "cannot write into"),
    (["CONTENTS", "--styles", "missing/*.jpg"], "not found"),
    (["CONTENTS"], "give CONTENT... and --styles"),
    (["CONTENTS", "--styles", "STYLES", "--ray", "127.0.0.1:9"], "cannot reach Ray"),
])
def test_bad_batch_input_is_one_line_exit_2(models_dir, inputs, tmp_path, args, message):
    c, s = inputs
    (tmp_path / "empty").mkdir()
    subst = {"EMPTY": str(tmp_path / "empty"), "CONTENTS": str(c), "STYLES": str(s)}
    t = time.perf_counter()
    r = nst(models_dir, "batch", *[subst.get(a, a) for a in args], *ARGS)
    assert r.exit_code == 2 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and time.perf_counter() - t < 30


def test_kill_9_mid_batch_then_rerun_redoes_nothing_finished(models_dir, inputs, tmp_path):
    c, s = inputs
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nst_onnx.cli", "batch", str(c), "--styles", str(s), "-o",
           str(out), "--size", "40", "--iterations", "30", "--threads", "1", "--workers", "1",
           "--checkpoint-every", "0.2", "--quiet", "--models", str(models_dir)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not ((out / "manifest.jsonl").exists() and
                   '"done"' in (out / "manifest.jsonl").read_text()):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    first = [x for x in manifest(out) if x["status"] == "done"]
    assert 1 <= len(first) < 4
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    second = manifest(out)[len(first):]
    done_before = {x["output"] for x in first}
    assert {x["output"] for x in second if x["status"] == "skipped"} == done_before
    assert len([x for x in second if x["status"] == "done"]) == 4 - len(done_before)
    assert len(list(out.glob("*.png"))) == 4 and not list(out.glob(".*.ckpt.npz"))


def test_worker_processes_give_the_same_pixels(models_dir, inputs, tmp_path):
    c, s = inputs
    outs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        r = nst(models_dir, "batch", str(c), "--styles", str(s), "-o", str(out), *ARGS,
                "--workers", workers)
        assert r.exit_code == 0, r.output
        outs[workers] = {p.name: np.asarray(Image.open(p)) for p in out.glob("*.png")}
    assert outs["1"].keys() == outs["2"].keys() and len(outs["1"]) == 4
    assert all(np.array_equal(outs["1"][k], outs["2"][k]) for k in outs["1"])


def test_ray_gives_the_same_pixels_and_failures_stay_alone(models_dir, inputs, tmp_path):
    ray = pytest.importorskip("ray")
    c, s = inputs
    (c / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    local = tmp_path / "local"
    r = nst(models_dir, "batch", str(c), "--styles", str(s), "-o", str(local), *ARGS,
            "--workers", "1")
    assert r.exit_code == 2
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = tmp_path / "ray"
        r = nst(models_dir, "batch", str(c), "--styles", str(s), "-o", str(remote), *ARGS,
                "--ray", "auto")
    finally:
        ray.shutdown()
    assert r.exit_code == 2, r.output
    assert "4 done, 0 skipped, 2 failed" in r.output
    for p in local.glob("*.png"):
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(remote / p.name)))
    failed = [x for x in manifest(remote) if x["status"] == "failed"]
    assert all("not a readable image" in x["reason"] for x in failed)


def test_one_worker_when_auto_finds_a_gpu(monkeypatch):
    """Workers on one GPU would each hold a CUDA context and arena: where `auto` resolves to
    CUDA the batch runs one worker, as with --device cuda; on the CPU one per two cores."""
    from nst_onnx.batch import default_workers
    from nst_onnx.config import EngineOptions, RunOptions
    from nst_onnx.run import devices, sessions

    monkeypatch.setattr(sessions, "physical_cores", lambda: 8)
    monkeypatch.setattr(devices, "cuda_problem", lambda debug=False: None)
    assert default_workers(EngineOptions(device="auto"), RunOptions(size=64), 8) == 1
    monkeypatch.setattr(devices, "cuda_problem", lambda debug=False: "no GPU")
    assert default_workers(EngineOptions(device="auto"), RunOptions(size=64), 8) == 4


def test_ray_tasks_ask_for_a_gpu_when_auto_finds_one_in_the_cluster():
    """With `auto`, tasks on a GPU node would otherwise all pick the device unscheduled."""
    from nst_onnx.batch.workers import ray_gpus as _ray_gpus

    assert _ray_gpus("auto", {"CPU": 16.0, "GPU": 2.0}) == 1
    assert _ray_gpus("auto", {"CPU": 16.0}) == 0
    assert _ray_gpus("cuda", {"CPU": 16.0}) == 1
    assert _ray_gpus("cpu", {"CPU": 16.0, "GPU": 2.0}) == 0


def test_jobs_file_with_a_byte_order_mark_or_not_utf8(tmp_path):
    from nst_onnx.batch import read_jobs_file
    from nst_onnx.errors import BadInput

    f = tmp_path / "jobs.csv"
    f.write_bytes("\ufeffcontent,style\na.jpg,b.jpg\n".encode())  # Excel's "CSV UTF-8"
    assert read_jobs_file(f)[0]["content"] == "a.jpg"
    f.write_bytes(b"content,style\n\xe9t\xe9.jpg,b.jpg\n")
    with pytest.raises(BadInput, match="not UTF-8"):
        read_jobs_file(f)


def test_threads_beyond_the_cpus_are_capped(models_dir):
    import os

    from nst_onnx import StyleTransfer

    notes = []
    st = StyleTransfer(device="cpu", threads=10_000, models_dir=models_dir, log=notes.append)
    assert st.threads == (os.cpu_count() or 1) and any("--threads 10000" in n for n in notes)
