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
