"""Export: VGG19 + loss → ``<models>/<key>/{features,loss}.onnx`` and ``manifest.json``.

Every file is written to a temporary name and renamed, the manifest last: a directory with a
manifest is complete, and an interrupted export leaves nothing that looks finished.
The manifest records the weights source and hashes, the layers, pooling, opset,
preprocessing, every graph's inputs and outputs (from the declared interfaces: the features
and loss graphs, and the optimiser's step graphs), the files' SHA-256s and tool versions.

Where models live (:func:`default_models_dir`): ``$NST_ONNX_MODELS``; else ``models/`` of
the source checkout this package runs from; else the user cache next to the weights. An
installed ``nst`` run from any folder never litters that folder.
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

from .._version import __version__
from ..config import (
    ADAM_MOMENTS,
    REFERENCE_PIXELS,
    TEMPORAL_WEIGHT,
    LossSpec,
    LossWeights,
    RunOptions,
)
from ..errors import BadInput, ModelError
from ..io.atomic import regular_file, sha256_file, write_bytes
from ..vgg19 import MEAN_BGR, channels, downsampling
from .builder import OPSET
from .calibrate import load_scales
from .interface import (
    features_io,
    loss_io,
    sized_layers,
    temporal_loss_io,
    window_features_io,
    window_loss_io,
)
from .networks import (
    build_features_graph,
    build_loss_graph,
    build_temporal_loss_graph,
    build_window_features_graph,
    build_window_loss_graph,
)
from .steps import STEP_GRAPHS
from .weights import Weights, default_cache_dir, load_weights, weights_identity
from .windows import WINDOW_MOVES

FORMAT = 7  # bump when graphs change incompatibly; older model directories are re-exported
MODEL_GRAPHS = ((features_io, build_features_graph), (loss_io, build_loss_graph),
                (temporal_loss_io, build_temporal_loss_graph))  # the last: nst video
# tiled evaluation (nst_onnx.run.tiled); a guided model's take the masks
WINDOW_GRAPHS = ((window_features_io, build_window_features_graph),
                 (window_loss_io, build_window_loss_graph))
SHARED_GRAPHS = {**STEP_GRAPHS, **WINDOW_MOVES}  # no weights: the same in every model


def model_graphs(spec: LossSpec) -> tuple:
    """(declare, build) of every graph a model of ``spec`` holds."""
    return MODEL_GRAPHS + WINDOW_GRAPHS
CHECKOUT = Path(__file__).resolve().parents[2]


def default_models_dir() -> Path:
    """``$NST_ONNX_MODELS``; else ``models/`` of the nst-onnx checkout this package is
    imported from (``pip install -e .``, or run in place) or that the current folder lies
    in; else ``<weights cache>/models`` — never a stray ``./models`` elsewhere."""
    if env := os.environ.get("NST_ONNX_MODELS"):
        return Path(env).expanduser()
    for root in (CHECKOUT, *[p for p in (Path.cwd(), *Path.cwd().parents)]):
        if _is_checkout(root):
            return root / "models"
    return default_cache_dir() / "models"


def _is_checkout(root: Path) -> bool:
    try:
        return (root / "models" / "README.md").is_file() and \
            'name = "nst-onnx"' in (root / "pyproject.toml").read_text()
    except OSError:
        return False


def export_model(spec: LossSpec, models_dir: Path | None = None, weights: Weights | None = None,
                 weights_path: str | os.PathLike | None = None, cache_dir: Path | None = None,
                 force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Write the model directory for ``spec`` and return it. A complete, current one is kept
    as is, unless ``weights_path`` names other weights than it was built from."""
    out = Path(models_dir or default_models_dir()) / spec.key
    try:
        return _export(spec, out, weights, weights_path, cache_dir, force, log)
    except OSError as e:  # a models folder that is a file, read-only, or a full disk
        raise ModelError(f"cannot write the model into {out} ({e.strerror or e}): give a "
                         "writable folder with --models or NST_ONNX_MODELS") from None


def _export(spec: LossSpec, out: Path, weights: Weights | None, weights_path, cache_dir,
            force: bool, log: Callable[[str], None]) -> Path:
    current = _current_manifest(out, spec)
    if current and not force:
        if weights_path is None:
            return out
        wanted = weights_identity(Path(weights_path))
        if wanted == current.get("weights", {}).get("identity"):
            return out
        log(f"{out} was built from other weights; exporting again from {weights_path}")
    out.mkdir(parents=True, exist_ok=True)  # first: an unwritable folder is the only line
    if weights is None:
        weights = load_weights(weights_path, cache_dir, log)
    if not current:
        log(f"Exporting the VGG19 loss graphs (once) to {out}")
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()  # the directory is incomplete until the new manifest lands
    pool_scales, rescale = None, None
    if spec.pooling == "avg":
        pool_scales, about = load_scales()
        rescale = {"what": "each average pool's output × a per-channel factor: mean squared "
                           "output = the max pool's (nst_onnx/graphs/calibrate.py)",
                   "median_factor": {k: round(float(np.median(v)), 3)
                                     for k, v in pool_scales.items()},
                   "measured_on": about}
    files, io = {}, {}
    graphs = [(declare(spec), lambda b=build: b(weights, spec, pool_scales))
              for declare, build in model_graphs(spec)]
    graphs += [(declare(), build) for declare, build in SHARED_GRAPHS.values()]
    for iface, build in graphs:
        data = build().SerializeToString()
        write_bytes(out / iface.file, data)
        files[iface.file] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        io[iface.file] = iface.describe()
    manifest = {
        "format": FORMAT,
        "nst_onnx": __version__,
        "key": spec.key,
        "network": "VGG19 (Simonyan & Zisserman), convolutions up to the deepest chosen layer",
        "weights": weights.source,
        "content_layers": list(spec.content_layers),
        "style_layers": list(spec.style_layers),
        "pooling": spec.pooling,
        "guided": spec.guided,
        "avg_pool_rescale": rescale,
        "min_image_side": spec.min_side,
        "opset": OPSET,
        "preprocessing": {"input": "RGB float32 in [0, 255], NCHW",
                          "mean_bgr": list(MEAN_BGR),
                          "channel_flip": "RGB→BGR folded into conv1_1's input channels"},
        "loss": {"content": "wc·mean((F−P)²)", "gram": "F·Fᵀ/N, N = C·h·w",
                 "style": "ws·mean((G−A)²) per layer", "tv": "wtv·½·Σ(Δx)²",
                 "design": "docs/design.md"},
        "binding": binding(spec),
        "files": files,
        "io": io,
        "versions": {"onnx": onnx.__version__, "onnxruntime_at_export": onnxruntime.__version__,
                     "numpy": np.__version__},
    }
    write_bytes(manifest_path, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return out


def binding(spec: LossSpec) -> dict:
    """How ``nst`` fills the loss graph's inputs and runs Adam, so that a program in another
    language (examples/node/stylize.js) can drive the graphs from the manifest alone."""
    lw, run = LossWeights(), RunOptions()
    return {
        "targets": {"target_<layer>": "features.onnx's features_<layer> of the content",
                    "target_gram_<layer>": "features.onnx's gram_<layer> of the style"},
        "content_weights": {"each": lw.content_weight},
        "style_weights": {"each": lw.style_weight},
        "tv_weight": {"value": lw.tv_weight, "times": "reference_pixels / (H·W)",
                      "reference_pixels": REFERENCE_PIXELS},
        "inv_sizes": {"value": "1 / (channels · (H >> downsampling) · (W >> downsampling))",
                      "layers": [{"layer": n, "channels": channels(n),
                                  "downsampling": downsampling(n)} for n in sized_layers(spec)]},
        "init": "the content image",
        "temporal": {"graph": "temporal_loss.onnx (nst video): loss.onnx's inputs and these",
                     "warped": "the previous stylised frame warped into this one",
                     "reliability": "1 where that warp is trusted, 0 where not (blurred)",
                     "temporal_weight": {"value": TEMPORAL_WEIGHT},
                     "inv_pixels": {"value": "1 / (3 · H · W)"}},
        "adam": {"lr": run.lr, **ADAM_MOMENTS,
                 "step": "1, 2, … (the iteration)"},
    }


def _current_manifest(out: Path, spec: LossSpec) -> dict | None:
    """The manifest of a complete export of ``spec`` in the current format, else None."""
    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    ok = (m.get("format") == FORMAT and m.get("key") == spec.key
          and (spec.pooling != "avg" or m.get("avg_pool_rescale") is not None)
          and all((out / declare(spec).file).exists() for declare, _ in model_graphs(spec))
          and all((out / declare().file).exists() for declare, _ in SHARED_GRAPHS.values()))
    return m if ok else None


def read_manifest(model_dir: Path, verify: bool = True) -> dict:
    """The manifest of an exported model, checked against its files' SHA-256s. A model
    folder may have been copied from elsewhere: its manifest names only plain files beside
    it (no path, no FIFO or device), or it is refused before anything is opened."""
    fix = f"re-export it: nst export --models {model_dir.parent}"
    try:
        m = json.loads(regular_file(model_dir / "manifest.json", "model manifest").read_text())
    except BadInput as e:
        raise ModelError(f"{e}; {fix}") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"no readable manifest in {model_dir} ({e.__class__.__name__}); {fix}") \
            from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        found = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise ModelError(f"model in {model_dir} has format {found}, this nst-onnx "
                         f"reads {FORMAT}; {fix} --rebuild")
    files = m.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(info, dict) and isinstance(info.get("sha256"), str)
            for info in files.values()):
        raise ModelError(f"the manifest in {model_dir} lists no files as this version writes "
                         f"them; {fix} --rebuild")
    for name in files:
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise ModelError(f"the manifest in {model_dir} names {name[:60]!r}, not a file in "
                             f"that folder: refused; {fix} --rebuild")
    if verify:
        for name, info in files.items():
            path = model_dir / name
            if not path.exists():
                raise ModelError(f"model file {path} is missing; {fix}")
            try:
                digest = sha256_file(regular_file(path, "model file"))
            except BadInput as e:
                raise ModelError(f"{e}; {fix} --rebuild") from None
            if digest != info["sha256"]:
                raise ModelError(f"model file {path} does not match its manifest "
                                 f"(corrupt or modified); {fix} --rebuild")
    return m
