"""`nst stylize` end to end at small sizes: outputs, options, errors, signals, determinism."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nst_onnx.cli import app

runner = CliRunner()


def nst(models_dir, *args):
    r = runner.invoke(app, [*args, "--models", str(models_dir)])
    return r


def test_stylize_json_loss_decreases_and_keeps_aspect(models_dir, images, tmp_path):
    out = tmp_path / "out.png"
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            "-o", str(out), "--size", "96", "--iterations", "8", "--json", "--threads", "2")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["final_loss"] < 0.5 * summary["initial_loss"]
    assert summary["iterations"] == 8 and summary["evaluations"] >= 8
    assert summary["stop_reason"] == "iteration budget reached"
    img = Image.open(out)
    cw, ch = Image.open(images["tubingen"]).size
    assert max(img.size) == 96
    assert abs(img.size[0] / img.size[1] - cw / ch) < 0.03
    # the PNG carries the settings
    meta = json.loads(img.text["nst-onnx"])
    assert meta["settings"]["iterations"] == [8] and meta["settings"]["scales"] == [96]
    assert meta["model"] == summary["model"]


def test_adam_and_blended_styles_and_save_every(models_dir, images, tmp_path):
    out = tmp_path / "adam.jpg"
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            str(images["tubingen"]), "--style-blend", "0.8,0.2", "-o", str(out), "--size", "64",
            "--iterations", "6", "--optimizer", "adam", "--lr", "5", "--save-every", "2",
            "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["final_loss"] < s["initial_loss"]
    assert Image.open(out).format == "JPEG"
    for i in (2, 4):
        assert (tmp_path / f"adam.iter{i}.jpg").exists()
    assert not (tmp_path / "adam.iter6.jpg").exists()  # the final image is OUT itself


@pytest.mark.parametrize("args, message", [
    (["--style-blend", "1,2"], "--style-blend has 2 weights for 1 style"),
    (["--content-layers", "relu9_9"], "unknown layer"),
    (["--tv-weight", "-1"], "tv-weight must be"),
    (["--size", "8"], "too small"),
    (["--optimizer", "sgd"], "unknown optimizer"),
    (["--history", "0"], "--history must be between"),
    (["--stop-tolerance", "-1"], "--stop-tolerance must be"),
    (["--device", "tpu"], "unknown device"),
    (["-o", "out.gif2"], "cannot tell the image format"),
    (["--masks", "a.png,b.png"], "input not found: a.png"),
])
def test_bad_options_exit_2_with_one_line(models_dir, images, tmp_path, monkeypatch, args,
                                          message):
    monkeypatch.chdir(tmp_path)
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            "--iterations", "1", "--size", "64", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_bad_paths_exit_2_before_any_work(models_dir, images, tmp_path):
    r = nst(models_dir, "stylize", str(tmp_path / "missing.jpg"), str(images["starry_night"]))
    assert r.exit_code == 2 and "not found" in r.output
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            "-o", str(images["tubingen"]))
    assert r.exit_code == 2 and "is one of the inputs" in r.output
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            "-o", str(tmp_path / "no" / "dir" / "x.png"))
    assert r.exit_code == 2 and "does not exist" in r.output
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a jpeg")
    r = nst(models_dir, "stylize", str(junk), str(images["starry_night"]), "-o",
            str(tmp_path / "o.png"))
    assert r.exit_code == 2 and "not a readable image" in r.output


def test_same_seed_same_bytes(models_dir, images, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"d{i}.png"
        r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
                "-o", str(out), "--size", "64", "--iterations", "5", "--init", "noise",
                "--seed", "3", "--quiet", "--threads", "2")
        assert r.exit_code == 0, r.output
        outs.append(np.asarray(Image.open(out)))
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_best_image_and_exits(models_dir, images, tmp_path, sig, code):
    out = tmp_path / "interrupted.png"
    cmd = [sys.executable, "-m", "nst_onnx.cli", "stylize", str(images["tubingen"]),
           str(images["starry_night"]), "-o", str(out), "--size", "128", "--iterations", "10000",
           "--models", str(models_dir), "--threads", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr] + [lines.put(None)],
                     daemon=True).start()
    # wait until the run has made an iteration (its first progress line; the next would come
    # 5 s later off a terminal); a child that prints nothing fails the test after 60 s
    # instead of hanging it
    seen, deadline, log = 0, time.time() + 60, []
    try:
        while seen < 1:
            line = lines.get(timeout=max(deadline - time.time(), 0.1))
            assert line is not None, "".join(log)
            log.append(line)
            seen += "/10000" in line
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code, "".join(log)
    finally:
        proc.kill()
    rest = ""
    while (line := lines.get(timeout=10)) is not None:
        rest += line
    assert "Traceback" not in rest
    img = Image.open(out)
    img.load()
    assert max(img.size) == 128


def test_info_json(models_dir):
    r = runner.invoke(app, ["info", "--json", "--models", str(models_dir)])
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert "CPUExecutionProvider" in data["providers"]
    assert data["models"] and data["models"][0]["key"].startswith("vgg19-max")


def test_no_clobber_and_unwritable_output(models_dir, images, tmp_path):
    out = tmp_path / "exists.png"
    out.write_bytes(b"keep me")
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            "-o", str(out), "--no-clobber")
    assert r.exit_code == 2 and "--no-clobber" in r.output
    assert out.read_bytes() == b"keep me"
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            "-o", "/proc/nst-out.png")
    assert r.exit_code == 2 and "cannot write into /proc" in r.output
    (tmp_path / "adir.png").mkdir()
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            "-o", str(tmp_path / "adir.png"))
    assert r.exit_code == 2 and "is a directory" in r.output


def test_zero_iterations_is_a_usage_error(models_dir, images, tmp_path):
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            "-o", str(tmp_path / "z.png"), "--iterations", "0")
    assert r.exit_code == 2 and "--iterations must be ≥ 1" in r.output


def test_memory_estimate_refuses_with_largest_size_unless_forced(models_dir, images, tmp_path,
                                                                 monkeypatch):
    import nst_onnx.run.resources as res

    monkeypatch.setattr(res, "available_mb", lambda: 420.0)
    out = tmp_path / "m.png"
    args = ["stylize", str(images["tubingen"]), str(images["starry_night"]), "-o", str(out),
            "--iterations", "1", "--json"]
    r = nst(models_dir, *args, "--size", "128")
    assert r.exit_code == 2 and "or pass --force" in r.output
    side = int(r.output.split("--size ")[1].split()[0])
    assert 16 <= side < 128 and res.estimate_peak_mb(side * side * 0.75 / 1e6) <= 0.9 * 420 + 1
    r = nst(models_dir, *args, "--size", "128", "--force")
    assert r.exit_code == 0, r.output
    mem = json.loads(r.stdout.strip().splitlines()[-1])["memory"]
    assert mem["estimated_peak_mb"] > 0 and mem["available_mb"] == 420
    monkeypatch.setattr(res, "available_mb", lambda: 200.0)  # below any run's base
    r = nst(models_dir, *args, "--size", "128")
    assert r.exit_code == 2 and "too little for any size" in r.output


def test_click_usage_errors_are_one_line_exit_2(models_dir):
    for args in (["stylize", "a.jpg", "b.jpg", "--size", "abc"], ["stylize"], ["bogus"]):
        r = subprocess.run([sys.executable, "-m", "nst_onnx.cli", *args], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nst: error:"), r.stderr


def test_bench_json(models_dir):
    r = runner.invoke(app, ["bench", "--size", "32", "--repeats", "1", "--json", "--models",
                            str(models_dir), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["results"][0]["size"] == 32 and data["results"][0]["median_s"] > 0


def test_masks_from_the_command_line(models_dir, images, tmp_path):
    w, h = Image.open(images["tubingen"]).size
    half = Image.new("L", (w, h), 0)
    half.paste(255, (0, 0, w, h // 2))
    half.save(tmp_path / "top.png")
    Image.eval(half, lambda v: 255 - v).save(tmp_path / "bottom.png")
    out = tmp_path / "masked.png"
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            str(images["tubingen"]), "--masks", f"{tmp_path / 'top.png'},{tmp_path / 'bottom.png'}",
            "-o", str(out), "--size", "64", "--iterations", "3", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["model"].endswith("-guided") and len(summary["masks"]) == 2
    assert Image.open(out).size == (64, 48)
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]),
            "--masks", f"{tmp_path / 'top.png'},{tmp_path / 'bottom.png'}", "-o", str(out),
            "--size", "64", "--iterations", "1")
    assert r.exit_code == 2 and "2 masks for 1 style images" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_bench_profile_splits_convolutions_from_the_rest(models_dir):
    r = runner.invoke(app, ["bench", "--size", "32", "--repeats", "2", "--profile", "--json",
                            "--models", str(models_dir), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["results"][0]["profile"]
    assert p["conv_ms"] > 0 and p["other_ms"] > 0
    assert p["total_ms"] == pytest.approx(p["conv_ms"] + p["other_ms"])
    assert "Conv" in p["by_op_ms"] and 0 < p["other_share"] < 1


def test_a_history_too_large_for_the_memory_is_refused(models_dir, images, tmp_path,
                                                       monkeypatch):
    """The estimate counts the optimiser's history (on the device for lbfgs-onnx)."""
    import nst_onnx.run.resources as res

    monkeypatch.setattr(res, "available_mb", lambda: 2000.0)
    args = ["stylize", str(images["tubingen"]), str(images["starry_night"]), "-o",
            str(tmp_path / "h.png"), "--size", "512", "--iterations", "1"]
    r = nst(models_dir, *args, "--optimizer", "lbfgs-onnx", "--history", "1000")
    assert r.exit_code == 2 and "GB of memory" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_settings_left_out_reach_the_run_as_not_given(models_dir, images, tmp_path,
                                                    monkeypatch):
    """--history and --size left out arrive as None, not as the defaults the help shows:
    the memory check may lower only a history the user did not give (with 20 passed, a
    4096 px run was refused instead of running with 10 pairs)."""
    import nst_onnx.run.resources as res
    from nst_onnx.errors import BadInput

    seen = []

    def check(device, spec, shape, style_pixels, regions, final, run, log, scale=1.0):
        seen.append((run.history, run.size, final))
        raise BadInput("checked")
    monkeypatch.setattr(res, "check_memory", check)
    args = ["stylize", str(images["tubingen"]), str(images["starry_night"]), "-o",
            str(tmp_path / "h.png"), "--iterations", "1"]
    assert nst(models_dir, *args).exit_code == 2
    assert nst(models_dir, *args, "--history", "20", "--size", "64").exit_code == 2
    assert seen == [(None, None, 512), (20, 64, 64)]


def test_bench_profile_is_refused_on_cuda():
    """On CUDA the profiler records kernel launches, not GPU time (an H200 showed 3.4 ms of
    'kernels' for a 14.6 ms evaluation): refused in one line instead of a wrong split."""
    from types import SimpleNamespace

    from nst_onnx.diagnostics import bench
    from nst_onnx.errors import BadInput

    with pytest.raises(BadInput, match="Nsight"):
        bench(SimpleNamespace(device="cuda"), [32], 2, profile=True)


def test_what_was_silently_ignored_is_one_line_exit_2(models_dir, images, tmp_path):
    """An --init image over --max-image-pixels, the old `nst export --force`, and batch's
    memory override (now --force, as everywhere) reaching the memory check."""
    big = tmp_path / "init.png"
    Image.new("RGB", (400, 300)).save(big)
    r = nst(models_dir, "stylize", str(images["tubingen"]), str(images["starry_night"]), "-o",
            str(tmp_path / "o.png"), "--size", "48", "--iterations", "1", "--init", str(big),
            "--max-image-pixels", "100000")
    assert r.exit_code == 2 and "init image" in r.output and "Traceback" not in r.output
    r = nst(models_dir, "export", "--force")
    assert r.exit_code == 2 and "--rebuild" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_batch_force_overrides_the_memory_estimate(models_dir, images, tmp_path, monkeypatch):
    import nst_onnx.run.resources as res

    monkeypatch.setattr(res, "available_mb", lambda: 420.0)
    args = ["batch", str(images["tubingen"]), "--styles", str(images["starry_night"]), "-o",
            str(tmp_path / "b"), "--size", "128", "--iterations", "1", "--workers", "1",
            "--quiet"]
    assert nst(models_dir, *args).exit_code == 2  # refused: the job failed alone
    r = nst(models_dir, *args, "--force")
    assert r.exit_code == 0, r.output


def test_the_eta_counts_later_scales_by_their_pixels():
    """Coarse-to-fine: the rate is the scale at hand's; each later scale's iterations count
    at that rate times its pixels over this scale's to the power TIME_EXPONENT, and a new
    scale starts from the last rate grown so (at 4096 px the flat ETA said minutes for hours
    of work)."""
    from types import SimpleNamespace

    from nst_onnx.cli import TIME_EXPONENT, _clock, _Progress

    grown = 4 ** TIME_EXPONENT  # twice the side
    assert grown > 4

    progress = _Progress(quiet=True)
    progress.plan = ([512, 1024, 2048], [120, 35, 35])

    def at(iteration, scale):
        return SimpleNamespace(iteration=iteration, iterations=190, scale=scale, seconds=1.0)
    # the scale's clock starts; until it has a rate, the optimiser's seconds at this scale
    assert progress.seconds_per_iteration(at(121, 1024), now=100.0) == pytest.approx(1.0)
    spi = progress.seconds_per_iteration(at(131, 1024), now=120.0)
    assert spi == pytest.approx(2.0)
    assert progress.eta(at(131, 1024), spi) == pytest.approx(2.0 * (155 - 131 + 35 * grown))
    assert progress.seconds_per_iteration(at(156, 2048), now=200.0) == pytest.approx(2 * grown)
    assert progress.eta(at(156, 2048), 8.0) == pytest.approx(8.0 * (190 - 156))
    assert _clock(3725) == "1:02:05" and _clock(125) == "2:05"
