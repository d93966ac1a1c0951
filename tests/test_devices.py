"""Devices and providers: the provider asked for, or one line saying why not.

On this CPU machine with the CPU wheel (case a): `--device cuda` exits 2 with one line,
`--device auto` runs on the CPU and says so in --json. The GPU wheel without a GPU (case b)
is reproduced in test_slow.py (it installs onnxruntime-gpu into a fresh venv). The
diagnosis of onnxruntime's CUDA loading log is checked here on the messages it prints."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from nst_onnx.cli import app
from nst_onnx.run import cuda, sessions

pytestmark = pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                                reason="this machine has onnxruntime-gpu")


def _stylize(models_dir, images, tmp_path, *args):
    return CliRunner().invoke(app, ["stylize", str(images["tubingen"]),
                                    str(images["starry_night"]), "-o", str(tmp_path / "o.png"),
                                    "--size", "32", "--iterations", "2", "--models",
                                    str(models_dir), *args])


def test_cuda_on_the_cpu_wheel_is_one_line_exit_2(models_dir, images, tmp_path):
    r = _stylize(models_dir, images, tmp_path, "--device", "cuda")
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert "CPU build" in r.output and "NST_ONNX_RUNTIME=cuda" in r.output
    assert not (tmp_path / "o.png").exists()


def test_auto_runs_on_the_cpu_and_records_it(models_dir, images, tmp_path):
    r = _stylize(models_dir, images, tmp_path, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["device"] == "cpu" and s["providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "unknown device"),
    (["--gpu-mem-limit", "-5"], "--gpu-mem-limit must be"),
    (["--gpu-mem-limit", "nan"], "--gpu-mem-limit must be"),
])
def test_bad_device_options(models_dir, images, tmp_path, args, message):
    r = _stylize(models_dir, images, tmp_path, *args)
    assert r.exit_code == 2 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


NO_FILE = "cannot open shared object file: No such file or directory"
PRELOAD_LOG = "\n".join([
    f"Failed to load libcublasLt.so.13: libcublasLt.so.13: {NO_FILE}",
    f"Failed to load libcurand.so.10: libcurand.so.10: {NO_FILE}",
    "2026-11-30 21:00:00.0 [E:onnxruntime:Default, provider_bridge_ort.cc:2251 "
    "TryGetProviderInfo_CUDA] Failed to load library libonnxruntime_providers_cuda.so with "
    f"error: libcublasLt.so.13: {NO_FILE}"])


def test_diagnosis_names_missing_libraries(monkeypatch):
    monkeypatch.setattr(cuda, "runtime_clash", lambda: None)
    monkeypatch.setattr(cuda, "nvidia_driver_version", lambda: (580, 65))
    line = cuda.diagnose_cuda(PRELOAD_LOG)
    assert "libcublasLt.so.13, libcurand.so.10" in line and "NST_ONNX_RUNTIME=cuda" in line
    assert "\n" not in line


def test_diagnosis_no_driver_and_old_driver(monkeypatch):
    monkeypatch.setattr(cuda, "runtime_clash", lambda: None)
    monkeypatch.setattr(cuda, "nvidia_driver_version", lambda: None)
    monkeypatch.setattr(cuda, "_libcuda_loads", lambda: False)
    assert "no NVIDIA GPU driver" in cuda.diagnose_cuda(PRELOAD_LOG)
    monkeypatch.setattr(cuda, "nvidia_driver_version", lambda: (535, 104))
    monkeypatch.setattr(cuda, "_driver_needed", lambda: (13, 580))
    line = cuda.diagnose_cuda("")
    assert "driver 535.104 is older than CUDA 13 needs (≥ 580)" in line and "cuda12" in line


def test_two_runtime_builds_are_a_clash_with_a_fix(monkeypatch):
    monkeypatch.setattr(cuda, "installed_runtimes", lambda: ["onnxruntime", "onnxruntime-gpu"])
    line = cuda.runtime_clash()
    assert "overwrite each other" in line
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in line and "[cuda,cudnn]" in line
    assert cuda.diagnose_cuda(PRELOAD_LOG) == line


def test_info_reports_runtimes_and_cuda(models_dir):
    r = CliRunner().invoke(app, ["info", "--json", "--models", str(models_dir)])
    data = json.loads(r.stdout)
    assert data["onnxruntime_packages"] == ["onnxruntime"] and data["runtime_clash"] is None
    assert data["device_auto"] == "cpu" and "CPU build" in data["cuda"]


def test_cuda_sessions_are_exact_float32_and_lean():
    opts = sessions.cuda_provider_options(tf32=False, gpu_mem_limit_mb=1024)
    assert opts["use_tf32"] == "0" and opts["arena_extend_strategy"] == "kSameAsRequested"
    assert opts["cudnn_conv_algo_search"] == "EXHAUSTIVE" and opts["gpu_mem_limit"] == str(2 ** 30)
    so = sessions._session_options("cuda", threads=8, debug=False)
    assert so.intra_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_shared_cuda_arena_falls_back_to_own_arenas(monkeypatch):
    """Where onnxruntime cannot make the shared device arena (here: the CPU build), or it is
    turned off, sessions keep their own: no error, no shared-arena config entry."""
    monkeypatch.setattr(sessions, "_CUDA_ARENA", None)
    assert sessions._register_cuda_arena(sessions.cuda_provider_options()) is False
    assert sessions._CUDA_ARENA == {}
    monkeypatch.setattr(sessions, "_CUDA_ARENA", {"gpu_mem_limit": None})
    monkeypatch.setenv("NST_ONNX_CUDA_SHARED_ARENA", "0")
    assert sessions._register_cuda_arena(sessions.cuda_provider_options()) is False
    monkeypatch.delenv("NST_ONNX_CUDA_SHARED_ARENA")
    # a session asking another memory limit than the arena was made with keeps its own
    monkeypatch.setattr(sessions, "_CUDA_ARENA", sessions.cuda_provider_options())
    assert sessions._register_cuda_arena(sessions.cuda_provider_options()) is True
    assert sessions._register_cuda_arena(sessions.cuda_provider_options(
        gpu_mem_limit_mb=512)) is False


@pytest.mark.parametrize("h, w, optimizer, history, measured_mb", [
    (512, 512, "lbfgs", 10, 1668), (1024, 1024, "lbfgs", 10, 3616),
    (2048, 2048, "lbfgs", 10, 11276), (768, 1024, "lbfgs", 10, 2992),
    (1536, 1536, "lbfgs", 10, 6892), (1024, 1024, "lbfgs-onnx", 5, 4996),
    (2048, 2048, "lbfgs-onnx", 10, 15408), (1024, 1024, "adam", 10, 4444)])
def test_gpu_memory_estimate_matches_the_h200_measurements(h, w, optimizer, history,
                                                           measured_mb):
    """docs/measurements/gpu_check_h200_*.json (README, GPU): within 5% either way."""
    from nst_onnx.config import LossSpec
    from nst_onnx.run import resources as res

    est = res.estimate_gpu_mb(LossSpec(), h, w, 0, res.device_state_images(optimizer, history))
    assert 0.95 < est / measured_mb < 1.05


def test_cuda_out_of_memory_becomes_one_line_and_other_errors_pass():
    """What onnxruntime raised on an H200 under --gpu-mem-limit (its BFC arena's words)."""
    err = RuntimeError("Non-zero status code returned while running Relu node. Name:'relu1_2' "
                       "... Available memory of 11535104 is smaller than requested bytes of "
                       "50331648")
    with pytest.raises(cuda.DeviceOutOfMemory, match=r"^the GPU ran out .*requested bytes"):
        with cuda.out_of_memory_as("cuda", "the GPU ran out of memory ({e})"):
            raise err
    with pytest.raises(RuntimeError):  # on the CPU, or another error: unchanged
        with cuda.out_of_memory_as("cpu", "the GPU ran out of memory"):
            raise err
    with pytest.raises(ValueError):
        with cuda.out_of_memory_as("cuda", "the GPU ran out of memory"):
            raise ValueError("shape mismatch")
