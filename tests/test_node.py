"""The exported loss graph run from Node.js (examples/node/evaluate.js) gives what onnxruntime
gives in Python: onnxruntime-node and onnxruntime-web's WASM build; and a whole stylisation
from Node (examples/node/stylize.js) matches the library's. Skipped, with the reason,
where Node or the packages are missing (``npm install --prefix examples/node``; .ci/run
installs them)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import runtimes  # noqa: E402


def _node_with(package: str) -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    if not (runtimes.NODE_DIR / "node_modules" / package).exists():
        pytest.skip(f"{package} is not installed: npm install --prefix examples/node")


@pytest.mark.parametrize("backend, package", [("node", "onnxruntime-node"),
                                              ("wasm", "onnxruntime-web")])
def test_node_evaluates_the_loss_graph_as_python_does(models_dir, backend, package):
    _node_with(package)
    graph, feeds = runtimes.problem(64, models_dir)
    (ref, _, _), _ = runtimes.ort_run(graph, feeds, "CPUExecutionProvider", 2, 1)
    res, note = runtimes.node_run(graph, feeds, backend, 2, 1)
    assert res is not None, note
    d = runtimes.compare(res[0], ref)
    assert d["shapes_as_declared"] and set(res[0]) == set(ref)
    # the WASM build sums in another order: 2e-4 observed at 256 px (scripts/runtimes.py)
    assert d["loss_rel"] < 1e-3 and d["term_rel_max"] < 1e-3 and d["grad_rel_l2"] < 2e-3, d


def test_chromium_webgpu_runs_the_loss_graph_as_python_does(models_dir):
    """onnxruntime-web's WebGPU provider in headless Chromium (examples/browser/evaluate.html):
    the graphs that once needed MaxPool's Indices and ScatterElements, which it lacks, run
    there. Without a GPU Chromium's adapter is SwiftShader (Vulkan on the CPU)."""
    _node_with("onnxruntime-web")
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    if runtimes.chromium() is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    graph, feeds = runtimes.problem(32, models_dir)
    (ref, _, _), _ = runtimes.ort_run(graph, feeds, "CPUExecutionProvider", 2, 1)
    res, note = runtimes.browser_run(graph, feeds, "webgpu", 0)
    if res is None and "adapter" in note.lower():
        pytest.skip(f"Chromium has no WebGPU adapter here: {note}")
    assert res is not None, note
    d = runtimes.compare(res[0], ref)
    assert d["shapes_as_declared"] and set(res[0]) == set(ref)
    assert d["loss_rel"] < 1e-3 and d["term_rel_max"] < 1e-3 and d["grad_rel_l2"] < 2e-3, d


def _stylize_js(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(runtimes.NODE_DIR / "stylize.js"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_node_stylizes_as_the_python_library_does(models_dir, st, tmp_path):
    """examples/node/stylize.js, from the manifest alone, against nst's own Adam run at the
    same settings: the same first loss and best loss (observed: equal to the last digit)."""
    _node_with("pngjs")
    from PIL import Image

    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.export import export_model

    pair = []
    for name in ("tubingen", "starry_night"):
        img = Image.open(runtimes.ROOT / "examples" / f"{name}.jpg").convert("RGB")
        img.thumbnail((96, 96))
        img.save(tmp_path / f"{name}.png")
        pair.append(tmp_path / f"{name}.png")
    model = export_model(LossSpec(), models_dir)
    r = _stylize_js(model, *pair, tmp_path / "node.png", 12)
    assert r.returncode == 0, r.stderr
    node = json.loads(r.stdout)
    result = st.run(st.prepare(*pair, size=96), iterations=12, optimizer="adam").summary()
    assert abs(node["first_loss"] / result["initial_loss"] - 1) < 1e-5
    assert abs(node["best_loss"] / result["final_loss"] - 1) < 1e-2
    assert node["best_loss"] < 0.5 * node["first_loss"]
    assert Image.open(tmp_path / "node.png").size == Image.open(pair[0]).size


def test_node_stylize_refuses_a_foreign_model_in_one_line(models_dir, tmp_path):
    _node_with("pngjs")
    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.export import export_model

    manifest = json.loads((export_model(LossSpec(), models_dir) / "manifest.json").read_text())
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps(manifest | {"format": 4}))
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    (tampered / "features.onnx").write_bytes(b"not the exported graph")
    png = tmp_path / "a.png"
    from PIL import Image
    Image.new("RGB", (64, 48), (120, 60, 30)).save(png)
    for model, words in ((old, "model format 4"), (tampered, "features.onnx differs")):
        r = _stylize_js(model, png, png, tmp_path / "out.png", 2)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert words in r.stderr and not (tmp_path / "out.png").exists()


def test_the_node_example_reads_the_model_format_the_library_writes():
    """Without node too: the example's own format constant is the export's (a format bump
    that forgets it makes every exported model foreign to it)."""
    import re

    from nst_onnx.graphs.export import FORMAT

    js = (Path(__file__).parents[1] / "examples/node/stylize.js").read_text()
    assert re.search(r"^const FORMAT = (\d+);", js, re.M).group(1) == str(FORMAT)
