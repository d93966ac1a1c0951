"""Checkpoints: where a run stands, beside its output, so a stopped run can continue.

``.OUT.ckpt.npz`` holds the current image at the current scale, the iterations done, the
optimiser's state (the device optimisers' full state; scipy's L-BFGS-B restarts from the
image with an empty history) and the run's fingerprint (settings, inputs, model). It is
written atomically, replaced every N seconds of work and removed when the run succeeds.
Reading one never runs code (``allow_pickle=False``).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInput
from .atomic import temp_name, write_bytes

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

    def save(self, path: Path) -> None:
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "scale": self.scale,
                "iteration": self.iteration, "done": self.done, "optimizer": self.optimizer}
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), x=np.asarray(self.x, np.float32),
                 **{f"state_{k}": np.asarray(v) for k, v in self.state.items()})
        write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, fingerprint: str) -> Checkpoint:
    """The checkpoint at ``path`` if it is whole and was made by a run with ``fingerprint``;
    otherwise :class:`CheckpointError` with one line saying why."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            x = z["x"]
            state = {k[len("state_"):]: z[k] for k in z.files if k.startswith("state_")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({e.__class__.__name__})") \
            from None
    if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
        raise CheckpointError(f"checkpoint {path} was made with other settings, inputs or model")
    if x.ndim != 3 or x.shape[0] != 3 or not np.isfinite(x).all():
        raise CheckpointError(f"checkpoint {path} holds no valid image")
    return Checkpoint(fingerprint, int(meta["scale"]), int(meta["iteration"]), int(meta["done"]),
                      str(meta["optimizer"]), x.astype(np.float64), state)
