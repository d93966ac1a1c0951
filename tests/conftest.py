"""Shared fixtures. The real VGG19 weights come from the user's cache (downloaded once by
pip, ~20 MB, SHA-256 checked); models are exported once per test session into a temp dir."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def real_weights():
    from nst_onnx.graphs.weights import load_weights

    return load_weights(log=lambda m: print(m, file=sys.stderr))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, real_weights):
    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.export import export_model

    d = tmp_path_factory.mktemp("models")
    export_model(LossSpec(), d, weights=real_weights)
    return d


@pytest.fixture(scope="session")
def st(models_dir):
    from nst_onnx import StyleTransfer

    return StyleTransfer(device="cpu", threads=2, models_dir=models_dir)


@pytest.fixture()
def images(tmp_path):
    """Small copies of the bundled examples (fast to load)."""
    from PIL import Image

    out = {}
    for name in ("tubingen", "starry_night"):
        img = Image.open(EXAMPLES / f"{name}.jpg")
        img.thumbnail((128, 128))
        p = tmp_path / f"{name}.png"
        img.save(p)
        out[name] = p
    return out
