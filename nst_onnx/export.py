"""Export: VGG19 + loss → ``models/<key>/{features,loss}.onnx`` and ``manifest.json``.

Every file is written to a temporary name and renamed, the manifest last: a directory with a
manifest is complete, and an interrupted export leaves nothing that looks finished.
The manifest records the weights source and hashes, the layers, pooling, opset,
preprocessing, every graph input and output, the files' SHA-256s and the tool versions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from . import __version__
from .atomic import write_bytes
from .calibrate import load_scales
from .errors import ModelError
from .graph import OPSET, LossSpec, build_features_graph, build_loss_graph
from .vgg19 import MEAN_BGR, channels, min_size
from .weights import Weights, load_weights

FORMAT = 1  # bump when graphs change incompatibly; older model directories are re-exported
FILES = ("features.onnx", "loss.onnx")


def default_models_dir() -> Path:
    """``$NST_ONNX_MODELS``, else ``./models``."""
    return Path(os.environ.get("NST_ONNX_MODELS") or "models")


def _io_table(spec: LossSpec) -> dict:
    feat_out = {f"features_{n}": {"shape": [1, channels(n), f"h_{n}", f"w_{n}"],
                                  "meaning": f"{n} activations (content target)"}
                for n in spec.content_layers}
    feat_out |= {f"gram_{n}": {"shape": [channels(n)] * 2,
                               "meaning": f"Gram matrix F·Fᵀ/N of {n} (style target)"}
                 for n in spec.style_layers}
    img = {"image": {"shape": [1, 3, "H", "W"], "meaning": "RGB, float32, 0..255"}}
    loss_in = dict(img)
    if spec.guided:
        loss_in["guides"] = {"shape": ["R", 1, "H", "W"],
                             "meaning": "one mask per region (style), 0..1, at the image's size"}
    loss_in |= {f"target_{n}": {"shape": [1, channels(n), f"h_{n}", f"w_{n}"],
                                "meaning": f"content target: features_{n} of the content"}
                for n in spec.content_layers}
    loss_in |= {f"target_gram_{n}": {"shape": (["R"] if spec.guided else []) + [channels(n)] * 2,
                                     "meaning": f"style target: gram_{n} of each region's style"
                                     if spec.guided else
                                     f"style target: (blended) gram_{n} of the style(s)"}
                for n in spec.style_layers}
    loss_in |= {
        "content_weights": {"shape": [len(spec.content_layers)], "meaning": "wc per content layer"},
        "style_weights": {"shape": [len(spec.style_layers)], "meaning": "ws per style layer"},
        "tv_weight": {"shape": [], "meaning": "wtv"},
    }
    loss_out = {"loss": {"shape": [], "meaning": "total loss"},
                "grad": {"shape": [1, 3, "H", "W"], "meaning": "∂loss/∂image"}}
    loss_out |= {f"content_loss_{n}": {"shape": [], "meaning": "wc·mean((F−P)²)"}
                 for n in spec.content_layers}
    loss_out |= {f"style_loss_{n}": {"shape": [], "meaning": "ws·mean((G−A)²)" + (
                     " over regions, G_r = (F⊙T_r)(F⊙T_r)ᵀ/(C·ΣT_r²)" if spec.guided else "")}
                 for n in spec.style_layers}
    loss_out["tv_loss"] = {"shape": [], "meaning": "wtv·½·Σ(Δx)²"}
    return {"features.onnx": {"inputs": img, "outputs": feat_out},
            "loss.onnx": {"inputs": loss_in, "outputs": loss_out}}


def export_model(spec: LossSpec, models_dir: Path | None = None, weights: Weights | None = None,
                 weights_path: str | os.PathLike | None = None, cache_dir: Path | None = None,
                 force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Write the model directory for ``spec`` and return it; a complete one is kept as is."""
    out = (models_dir or default_models_dir()) / spec.key
    if not force and _is_current(out, spec):
        return out
    if weights is None:
        weights = load_weights(weights_path, cache_dir, log)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()  # the directory is incomplete until the new manifest lands
    pool_scales, rescale = None, None
    if spec.pooling == "avg":
        pool_scales, about = load_scales()
        rescale = {"what": "each average pool's output × a per-channel factor: mean output = "
                           "the max pool's (nst_onnx/calibrate.py)",
                   "median_factor": {k: round(float(np.median(v)), 3) for k, v in pool_scales.items()},
                   "measured_on": about}
    hashes, sizes = {}, {}
    for name, build in zip(FILES, (build_features_graph, build_loss_graph)):
        data = build(weights, spec, pool_scales).SerializeToString()
        write_bytes(out / name, data)
        hashes[name] = hashlib.sha256(data).hexdigest()
        sizes[name] = len(data)
    manifest = {
        "format": FORMAT,
        "nst_onnx": __version__,
        "key": spec.key,
        "network": "VGG19 (Simonyan & Zisserman), convolutions up to the deepest chosen layer",
        "weights": weights.source,
        "content_layers": list(spec.content_layers),
        "style_layers": list(spec.style_layers),
        "pooling": spec.pooling,
        "avg_pool_rescale": rescale,
        "min_image_side": min_size(list(spec.all_layers)),
        "opset": OPSET,
        "preprocessing": {"input": "RGB float32 in [0, 255], NCHW",
                          "mean_bgr": list(MEAN_BGR),
                          "channel_flip": "RGB→BGR folded into conv1_1's input channels"},
        "loss": {"content": "wc·mean((F−P)²)", "gram": "F·Fᵀ/N, N = C·h·w",
                 "style": "ws·mean((G−A)²) per layer", "tv": "wtv·½·Σ(Δx)²"},
        "files": {n: {"sha256": hashes[n], "bytes": sizes[n]} for n in FILES},
        "io": _io_table(spec),
        "versions": {"onnx": onnx.__version__, "onnxruntime_at_export": onnxruntime.__version__,
                     "numpy": np.__version__},
    }
    write_bytes(manifest_path, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return out


def _is_current(out: Path, spec: LossSpec) -> bool:
    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (m.get("format") == FORMAT and m.get("key") == spec.key
            and (spec.pooling != "avg" or m.get("avg_pool_rescale") is not None)  # older avg: unscaled
            and all((out / n).exists() for n in FILES))


def read_manifest(model_dir: Path, verify: bool = True) -> dict:
    """The manifest of an exported model, checked against its files' SHA-256s."""
    fix = f"re-export it: nst export --models {model_dir.parent}"
    try:
        m = json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"no readable manifest in {model_dir} ({e.__class__.__name__}); {fix}") \
            from None
    if m.get("format") != FORMAT:
        raise ModelError(f"model in {model_dir} has format {m.get('format')}, this nst-onnx "
                         f"reads {FORMAT}; {fix} --force")
    if verify:
        for name, info in m["files"].items():
            try:
                digest = hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
            except OSError:
                raise ModelError(f"model file {model_dir / name} is missing; {fix}") from None
            if digest != info["sha256"]:
                raise ModelError(f"model file {model_dir / name} does not match its manifest "
                                 f"(corrupt or modified); {fix} --force")
    return m
