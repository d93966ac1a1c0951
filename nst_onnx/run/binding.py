"""The hot path: one call runs the loss-and-gradient graph on an image.

The fixed inputs (targets, weights, guides, sizes — every input of the declared interface
but the image) are set once. On CPU they are numpy arrays onnxruntime reads in place; on
CUDA they are copied to the device once and bound with I/O binding, so each evaluation moves
only the image in and the gradient (and a few scalars) out. ``host_bytes`` counts what
crossed between the host's arrays and the session, per evaluation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ..graphs.interface import Interface
from .cuda import out_of_memory_as


@dataclass
class Terms:
    """One evaluation: total loss, gradient (1, 3, H, W) float32, and each named term."""

    loss: float
    grad: np.ndarray
    terms: dict[str, float]


class Evaluator:
    """Loss and gradient at an image, with the targets and weights fixed."""

    def __init__(self, session: ort.InferenceSession, io: Interface, fixed: dict[str, np.ndarray],
                 device: str = "cpu"):
        self.session = session
        self.io = io
        self.device = device
        want = set(io.names("inputs")) - {"image"}
        if set(fixed) != want:
            raise ValueError(f"{io.name} takes {sorted(want)}; got {sorted(fixed)}")
        self.output_names = io.names("outputs")
        self.term_names = io.names("outputs", "term")
        self.fixed = {k: np.asarray(v, dtype=np.float32, order="C") for k, v in fixed.items()}
        self.host_bytes = 0  # image in + outputs out, over all evaluations so far
        self.evaluations = 0
        # on a GPU: the fixed inputs bound on the device (the same copies as the device
        # optimisers'); the gradient is brought home here, for a host optimiser
        self._graph = DeviceGraph(session, io, device, Traffic(), self.bound) \
            if device == "cuda" else None

    @functools.cached_property
    def bound(self) -> dict[str, ort.OrtValue]:
        """The fixed inputs on the device, copied once for every graph that binds them (this
        evaluator's on a GPU, each device loop's)."""
        return {k: to_device(v, self.device) for k, v in self.fixed.items()}

    def device_graph(self, device: str, traffic: Traffic) -> DeviceGraph:
        """This loss graph for a device loop, its fixed inputs bound."""
        return DeviceGraph(self.session, self.io, device, traffic, self.bound)

    def __call__(self, image: np.ndarray) -> Terms:
        x = np.ascontiguousarray(image, dtype=np.float32)
        if self._graph is None:
            named = dict(zip(self.output_names,
                             self.session.run(self.output_names, {"image": x, **self.fixed})))
        else:
            named = self._graph(image=to_device(x, self.device))
            named["grad"] = named["grad"].numpy()
        self.evaluations += 1
        self.host_bytes += x.nbytes + sum(np.asarray(v).nbytes for v in named.values())
        return Terms(float(named["loss"]), named["grad"],
                     {k: float(named[k]) for k in self.term_names})


class Traffic:
    """Bytes that crossed between host arrays and the sessions."""

    def __init__(self):
        self.bytes = 0


class DeviceGraph:
    """One graph run with I/O binding, placed by its declared interface: image-sized state
    (role ``state``, ``grad``, ``image``) stays in OrtValues on the device; everything else
    (losses, dot products, coefficients) crosses as numpy and is counted in ``traffic``.
    ``fixed`` inputs are bound for every run: OrtValues as they are (already on the device),
    arrays copied there once."""

    DEVICE_ROLES = ("state", "grad", "image")
    OUT_OF_MEMORY = ("the GPU ran out of memory: use a smaller --size or --history, or raise "
                     "--gpu-mem-limit")

    def __init__(self, session: ort.InferenceSession, io: Interface, device: str,
                 traffic: Traffic, fixed: dict[str, np.ndarray] | None = None,
                 run_options: ort.RunOptions | None = None, outputs: list[str] | None = None,
                 out_of_memory: str | None = None):
        """``outputs``: only these are bound (and fetched); ``out_of_memory``: the one line
        an allocation failure becomes, on the CPU too (else a GPU's alone, this class's)."""
        self.session, self.io, self.device, self.traffic = session, io, device, traffic
        self.run_options = run_options
        self.outputs = [t for t in io.outputs if outputs is None or t.name in outputs]
        self.out_of_memory = out_of_memory
        self.seconds = 0.0
        self.fixed = {k: v if isinstance(v, ort.OrtValue) else to_device(v, device)
                      for k, v in (fixed or {}).items()}
        self._dtypes = {t.name: np.dtype(t.dtype) for t in io.inputs}

    def __call__(self, into: dict[str, tuple[int, tuple[int, ...]]] | None = None,
                 **inputs) -> dict:
        """Run on ``inputs``; ``into``: outputs written where the caller says, as (address,
        shape) on this device — a row of a history kept in place (see :func:`row`)."""
        import time

        b = self.session.io_binding()
        for t in self.io.inputs:
            v = self.fixed[t.name] if t.name in self.fixed else inputs[t.name]
            if isinstance(v, ort.OrtValue):
                b.bind_ortvalue_input(t.name, v)
            else:
                arr = np.asarray(v, dtype=self._dtypes[t.name], order="C")
                self.traffic.bytes += arr.nbytes
                b.bind_cpu_input(t.name, arr)
        into = into or {}
        for t in self.outputs:
            if t.name in into:
                ptr, shape = into[t.name]
                b.bind_output(t.name, self.device, 0, np.float32, list(shape), ptr)
            else:
                b.bind_output(t.name, self.device if t.role in self.DEVICE_ROLES else "cpu")
        start = time.perf_counter()
        with out_of_memory_as(self.device, self.out_of_memory or self.OUT_OF_MEMORY,
                              cpu_too=self.out_of_memory is not None):
            self.session.run_with_iobinding(b, self.run_options)
        self.seconds += time.perf_counter() - start
        out = {}
        for t, v in zip(self.outputs, b.get_outputs()):
            if t.role in self.DEVICE_ROLES:
                out[t.name] = v
            else:
                out[t.name] = v.numpy()
                self.traffic.bytes += out[t.name].nbytes
        return out


def to_device(arr: np.ndarray, device: str) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy(np.asarray(arr, np.float32, order="C"), device, 0)


def row(value: ort.OrtValue, k: int, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """Row ``k`` of a float32 (M, N) OrtValue as an output target for
    :meth:`DeviceGraph.__call__`'s ``into``, seen as ``shape`` (N elements)."""
    n = value.shape()[1]
    if int(np.prod(shape)) != n or not 0 <= k < value.shape()[0]:
        raise ValueError(f"row {k} of {value.shape()} is not {shape}")
    return value.data_ptr() + k * n * 4, tuple(shape)


def to_host(value: ort.OrtValue, traffic: Traffic) -> np.ndarray:
    arr = value.numpy()
    traffic.bytes += arr.nbytes
    return arr
