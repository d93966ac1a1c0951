"""Checkpoints: where a run stands, beside its output, so a stopped run can continue.

``.OUT.ckpt.npz`` holds the current image at the current scale, the iterations done, the
optimiser's state (the device optimisers' full state; scipy's L-BFGS-B restarts from the
image with an empty history) and the run's fingerprint (settings, inputs, model). It is
written atomically, replaced every N seconds of work, written once more when the run ends
(``stop_reason`` set: a crash while the output is saved then resumes to the save alone) and
removed once the output is in place.

Reading one never runs code (no pickles) and trusts nothing in it: the fingerprint is public
(PNG metadata, batch manifests), so every array's declared size is bounded before it is
read, and the meta, image and state are checked for type, shape, finiteness and range.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import HIGH, LOW, OPTIMIZERS
from ..errors import BadInput
from .atomic import atomic_path, regular_file, temp_name

FORMAT = 1


class CheckpointError(BadInput):
    """A checkpoint that is unreadable or belongs to other settings."""


def checkpoint_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(checkpoint_name(output.name))


def checkpoint_name(name: str) -> str:
    return f".{name}.ckpt.npz"


def longest_derived_name(name: str) -> int:
    """Bytes in the longest file name a run derives from the output name ``name`` (the
    checkpoint's temporary file): names are checked against the file system's limit with it
    before the run, not after."""
    return max(len(n.encode()) for n in (name, temp_name(name), temp_name(checkpoint_name(name))))


@dataclass
class Checkpoint:
    fingerprint: str  # of settings, inputs and model: a different run must not resume this
    scale: int  # index of the scale the run was at
    iteration: int  # iterations done at that scale
    done: int  # iterations done over all scales
    optimizer: str
    x: np.ndarray  # (3, H, W) image at that scale
    state: dict[str, np.ndarray] = field(default_factory=dict)  # the optimiser's
    stop_reason: str = ""  # set when the run had ended: only its output was still to write

    def save(self, path: Path) -> None:
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "scale": self.scale,
                "iteration": self.iteration, "done": self.done, "optimizer": self.optimizer,
                **({"stop_reason": self.stop_reason} if self.stop_reason else {})}
        # np.savez's layout, one member at a time: at print sizes the state is gigabytes,
        # and a lazy state (run.progress.Lazy) is fetched array by array as it is written
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as z:
            _write(z, "meta", np.array(json.dumps(meta)))
            _write(z, "x", np.asarray(self.x, np.float32))
            for k in self.state:  # each let go before the next is fetched
                _write(z, f"state_{k}", self.state[k])


def _write(z: zipfile.ZipFile, name: str, a) -> None:
    """One member in np.save's format; ``a`` an array, or an array given by its rows
    (run.progress.Rows: a history kept as a ring, written without gathering it)."""
    with z.open(f"{name}.npy", "w", force_zip64=True) as f:
        if not hasattr(a, "rows"):
            np.lib.format.write_array(f, np.asarray(a), allow_pickle=False)
            return
        np.lib.format.write_array_header_1_0(f, {
            "descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
            "shape": a.shape})
        for r in a.rows():
            f.write(memoryview(r).cast("B"))


def size_bound(side: int, history: int) -> int:
    """The most bytes a checkpoint of a run whose largest scale is ``side`` px can hold: its
    image and the largest optimiser state (L-BFGS's 2 × history rows of the image's size),
    float32, plus room for the meta."""
    return 12 * side * side * (3 + 2 * history) + (1 << 20)


def load_checkpoint(path: Path, fingerprint: str, max_bytes: int | None = None) -> Checkpoint:
    """The checkpoint at ``path`` if it is whole, was made by a run with ``fingerprint`` and
    holds what such a run writes (at most ``max_bytes`` of arrays); otherwise
    :class:`CheckpointError` with one line saying why."""
    try:
        regular_file(path, "checkpoint")
    except BadInput as e:
        raise CheckpointError(str(e)) from None
    try:
        with zipfile.ZipFile(path) as z:
            arrays = _read_arrays(z, path, max_bytes)
            meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({e.__class__.__name__})") \
            from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT \
            or meta.get("fingerprint") != fingerprint:
        raise CheckpointError(f"checkpoint {path} was made with other settings, inputs or model")
    bad = _bad_meta(meta) or _bad_image(arrays.get("x"))
    state = {k[len("state_"):]: v for k, v in arrays.items() if k.startswith("state_")}
    bad = bad or _bad_state(meta["optimizer"], state, arrays["x"].size)
    if bad:
        raise CheckpointError(f"checkpoint {path} is damaged: {bad}")
    return Checkpoint(fingerprint, meta["scale"], meta["iteration"], meta["done"],
                      meta["optimizer"], arrays["x"].astype(np.float64), state,
                      meta.get("stop_reason", ""))


def _read_arrays(z: zipfile.ZipFile, path: Path, max_bytes: int | None) -> dict[str, np.ndarray]:
    """Every ``.npy`` member, its header read first: a declared size beyond ``max_bytes`` in
    all (or beyond the member's own size) is refused before anything is inflated."""
    infos = [i for i in z.infolist() if i.filename.endswith(".npy")]
    total = sum(i.file_size for i in infos)
    if max_bytes is not None and total > max_bytes:
        raise CheckpointError(f"checkpoint {path} holds {total / 1e6:.0f} MB, more than a run "
                              f"of this size writes ({max_bytes / 1e6:.0f} MB): not used")
    out = {}
    for info in infos:
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(f))
            if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
                raise ValueError(f"{info.filename}: a declared size its file does not hold")
        with z.open(info) as f:
            out[info.filename[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
    return out


def _bad_meta(meta: dict) -> str:
    ints = {k: meta.get(k) for k in ("scale", "iteration", "done")}
    if any(type(v) is not int or v < 0 for v in ints.values()):
        return "its iteration counts are not whole numbers ≥ 0"
    if ints["iteration"] > ints["done"]:
        return "more iterations at its scale than in all"
    if meta.get("optimizer") not in OPTIMIZERS:
        return "an unknown optimiser"
    if not isinstance(meta.get("stop_reason", ""), str):
        return "a stop reason that is not text"
    return ""


def _bad_image(x) -> str:
    if x is None or x.dtype.kind != "f" or x.ndim != 3 or x.shape[0] != 3 or 0 in x.shape:
        return "no image of shape (3, H, W)"
    if not np.isfinite(x).all() or x.min() < LOW or x.max() > HIGH:
        return f"pixels outside [{LOW:g}, {HIGH:g}]"
    return ""


def _bad_state(optimizer: str, state: dict[str, np.ndarray], n: int) -> str:
    """What the optimiser that wrote it would refuse or misread (its resume takes these
    keys as they are)."""
    if any(v.dtype.kind not in "fiu" or not np.isfinite(v).all() for v in state.values()):
        return "an optimiser state that is not finite numbers"
    if optimizer == "adam" and "m" in state:
        if not {"v", "step"} <= state.keys() or state["m"].size != n or state["v"].size != n \
                or state["step"].size != 1 or state["step"].item() < 0:
            return "an Adam state of the wrong shape"
    if optimizer == "lbfgs-onnx" and "S" in state:
        s, y = state["S"], state["Y"] if "Y" in state else None
        sy, yy = state.get("hist_sy"), state.get("hist_yy")
        if y is None or sy is None or yy is None or "gamma" not in state or s.ndim != 2 \
                or s.shape != y.shape or s.shape[1] != n or sy.ndim != 2 \
                or sy.shape != yy.shape or sy.shape[0] != sy.shape[1] or len(sy) > len(s) \
                or state["gamma"].size != 1:
            return "an L-BFGS history of the wrong shape"
    return ""
