"""Where a batch's jobs run: here, in local worker processes, or as Ray tasks.

Every runner yields ``(job, fingerprint, outcome)`` — the encoded output and its summary, or
the exception that failed that job alone. Workers are expendable: a worker that dies (the
OOM killer, ``kill -9``) is replaced and its job run once more from its checkpoint; a
driver's SIGTERM / SIGINT reaches the workers, which checkpoint and stop; a worker whose
driver is gone stops by itself, so none outlives it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from ..config import NATIVE, EngineOptions, LossWeights, RunOptions
from ..errors import BadInput, Interrupted, NstError, os_error_line
from ..io.checkpoint import checkpoint_path
from ..io.images import encode_image

_ENGINES: dict = {}  # per worker process: the StyleTransfer of each (engine, spec)
_MODEL_DIRS: dict[str, Path] = {}  # per process: models that travelled (Ray), by hash
_PROGRESS = None  # a worker process's queue to the driver
_BUSY = threading.Event()  # a worker is inside a job (a signal then stops the job)
_STOPPING = threading.Event()  # a pool worker was told to stop: it takes no further job
STOP_GRACE = 8.0  # seconds workers get to checkpoint after the driver is stopped
WORKER_DIED = "its worker process died (killed by the system, perhaps for lack of memory)"


def preview_path(output: Path) -> Path:
    """Where a job shows its current iterate (``batch(preview_every=…)``; ``nst serve``)."""
    return output.with_name(f".{output.name}.preview.jpg")


def _write_preview(x, output: Path) -> None:
    import io

    from ..io.atomic import write_bytes
    from ..io.images import to_pil

    buf = io.BytesIO()
    to_pil(x.reshape(1, *x.shape[-3:])).save(buf, "JPEG", quality=85)  # (3, H, W) or NCHW
    write_bytes(preview_path(output), buf.getvalue())


def _engine(engine: dict, spec: dict, models: dict | str | None):
    from ..api import StyleTransfer

    key = json.dumps([engine, spec, models if isinstance(models, str) else None], default=str,
                     sort_keys=True)
    if key not in _ENGINES:
        options = dict(engine)
        if isinstance(models, dict):
            options["models_dir"] = str(_travelled_model(models).parent)
        elif models:
            options["models_dir"] = models
        spec = {k: v for k, v in spec.items() if k != "guided"}  # masks pick the guided twin
        _ENGINES[key] = StyleTransfer(**options, **spec, log=lambda m: None)
    return _ENGINES[key]


def _travelled_model(models: dict) -> Path:
    """The model files a Ray task was sent, written once per process into a private folder
    (``mkdtemp``: 0700, an unpredictable name) and checked against the hashes the driver sent
    — a folder someone prepared under a guessable name is never used."""
    sha = models["sha"]
    if sha not in _MODEL_DIRS:
        files = models["files"]
        manifest = json.loads(files["manifest.json"])
        listed = manifest.get("files", {})
        intact = all(name in files and hashlib.sha256(files[name]).hexdigest() == info["sha256"]
                     for name, info in listed.items())
        if not intact or not listed.get("loss.onnx", {}).get("sha256", "").startswith(sha):
            raise BadInput("the model files sent to this Ray worker did not arrive intact")
        root = Path(tempfile.mkdtemp(prefix="nst-onnx-models-"))
        atexit.register(shutil.rmtree, root, True)
        d = root / models["key"]
        d.mkdir()
        for name in [*listed, "manifest.json"]:
            (d / Path(name).name).write_bytes(files[name])
        _MODEL_DIRS[sha] = d
    return _MODEL_DIRS[sha]


def execute(payload: dict) -> dict:
    """Run one job (in whichever process it lands): the output as encoded bytes and the
    summary. Inputs are paths, or :class:`EncodedImage` bytes that travelled (Ray)."""
    if _STOPPING.is_set():  # the pool had queued this job before the stop
        os._exit(0)
    _BUSY.set()
    try:
        return payload.get("job_fn", _execute)(payload)  # an image job, unless it says
    finally:
        _BUSY.clear()
        if _STOPPING.is_set():  # its checkpoint is written; the driver wants no result
            os._exit(0)


def _execute(payload: dict) -> dict:
    st = _engine(payload["engine"], payload["spec"], payload["models"])
    run = RunOptions(**payload["run"])
    weights = LossWeights(**payload["weights"])
    output = Path(payload["output"])
    ckpt = checkpoint_path(output) if run.checkpoint_every and \
        os.access(output.parent, os.W_OK) else None
    index = payload["index"]
    if _PROGRESS is not None:
        _PROGRESS.put({"event": "started", "index": index})
    every, shown = payload.get("preview_every"), [0.0]

    def progress(p) -> None:
        if every and (time.monotonic() - shown[0] >= every or p.iteration == p.iterations):
            _write_preview(p.x, output)  # before the event: its reader finds the new picture
            shown[0] = time.monotonic()
        if _PROGRESS is not None:
            _PROGRESS.put({"event": "iteration", "index": index, "iteration": p.iteration,
                           "iterations": p.iterations, "loss": p.loss})
    result = st.transfer(payload["content"], payload["styles"], run, weights,
                         masks=payload["masks"], callback=progress, checkpoint=ckpt,
                         resume="auto", keep_checkpoint=True)
    if result.optimize.interrupted is not None:
        raise result.optimize.interrupted
    if result.optimize.error is not None:
        raise result.optimize.error
    summary = {k: v for k, v in result.summary().items() if k not in ("scales",)}
    summary["fingerprint"] = payload["fingerprint"]
    from .._version import __version__

    data = encode_image(result.image, output, {"nst-onnx": json.dumps(
        {"version": __version__, **summary, "output": str(output)}, default=str)},
                        pixels=result.pixels, depth=run.bit_depth, dpi=run.dpi)
    return {"data": data, "summary": summary}


def _init_worker(queue) -> None:
    global _PROGRESS
    _PROGRESS = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides (SIGTERM, below)
    signal.signal(signal.SIGTERM, _stop_worker)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()


def _stop_worker(signum, frame) -> None:
    """SIGTERM: a job in progress stops and checkpoints (its Interrupted goes back to the
    driver) and the worker leaves after it; an idle worker just leaves."""
    _STOPPING.set()
    if _BUSY.is_set():
        raise Interrupted(143)
    os._exit(0)


def _watch_parent(parent: int, every: float = 1.0) -> None:
    """No worker outlives its driver (``kill -9`` included): once the parent is gone, stop
    the job (it checkpoints) and leave."""
    while os.getppid() == parent:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _BUSY.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)
    os._exit(1)


def one_line(e: BaseException) -> str:
    if isinstance(e, NstError):
        return str(e)
    cause = getattr(e, "cause", None)  # a Ray task's own exception
    if isinstance(cause, BaseException):
        return one_line(cause)
    if isinstance(e, OSError) and e.strerror:
        return os_error_line(e)
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[-1] if text else ''}"[:300]


def default_workers(engine: EngineOptions, run: RunOptions, jobs: int) -> int:
    """One worker per two physical cores (each with two threads), as many as the memory
    estimate allows; one on a GPU (the device is shared: each worker would hold its own CUDA
    context and arena), also when ``auto`` finds one, or for a single job."""
    from ..run import resources
    from ..run.devices import resolve_device
    from ..run.sessions import physical_cores

    gpu = engine.device == "cuda" or (engine.device == "auto" and
                                      resolve_device("auto")[0] == "cuda")
    if gpu or jobs < 2 or engine.threads or run.size == NATIVE:  # native: print sizes
        return 1 if not engine.threads else max(1, min(jobs, physical_cores() // engine.threads))
    by_cores = max(1, physical_cores() // 2)
    avail = resources.available_mb()
    mpx = run.output_size ** 2 * 0.75 / 1e6
    per_job = resources.estimate_peak_mb(mpx, run.pairs, optimizer=run.optimizer)
    by_memory = max(1, int(resources.HEADROOM * avail // per_job)) if avail else by_cores
    return max(1, min(by_cores, by_memory, jobs))


def run_here(pending, payload, emit):
    """In this process, one job after another (a stop signal stops the job at hand, which
    keeps its checkpoint, and the batch)."""
    global _PROGRESS

    class Forward:
        def put(self, event):
            if event.pop("event") == "iteration":
                emit({"event": "iteration", **event})
    _PROGRESS = Forward()
    try:
        for job, fp in pending:
            try:
                outcome = execute(payload(job, fp))
            except Interrupted:
                raise
            except Exception as e:  # the job fails alone
                outcome = e
            yield job, fp, outcome
    finally:
        _PROGRESS = None


def run_pool(workers: int, pending, payload, emit):
    """Local worker processes (spawned: a clean onnxruntime in each). A round ends when all
    its jobs are done or the pool broke (a worker died); jobs that had started in a broken
    round run once more (from their checkpoints), those that had not are simply resubmitted."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    started: set[int] = set()
    relay = _Relay(events, started, emit)
    tries: dict[int, int] = {}
    try:
        while pending:
            broken = []
            for job, fp, outcome in _pool_round(ctx, workers, pending, payload, events):
                if _died(outcome):
                    if job.index not in started:
                        broken.append((job, fp))
                        continue
                    tries[job.index] = tries.get(job.index, 0) + 1
                    if tries[job.index] < 2:
                        started.discard(job.index)
                        broken.append((job, fp))
                        continue
                    outcome = NstError(f"{WORKER_DIED}, twice")
                yield job, fp, outcome
            pending = broken
    finally:
        relay.stop()


def _died(outcome) -> bool:
    from concurrent.futures.process import BrokenProcessPool

    return isinstance(outcome, BrokenProcessPool)


class _Relay:
    """Worker events → the driver: which jobs started, and progress for ``emit``."""

    def __init__(self, events, started: set[int], emit):
        self.events, self.started, self.emit = events, started, emit
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.forward, daemon=True)
        self.thread.start()

    def forward(self) -> None:
        import queue

        while not self.done.is_set():
            try:
                event = self.events.get(timeout=0.2)
            except (queue.Empty, EOFError, OSError):
                continue
            if event.pop("event") == "started":
                self.started.add(event["index"])
            else:
                self.emit({"event": "iteration", **event})

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=1)


def _pool_round(ctx, workers: int, pending, payload, events):
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(min(workers, len(pending)), mp_context=ctx,
                               initializer=_init_worker, initargs=(events,))
    try:
        futures = {pool.submit(execute, payload(job, fp)): (job, fp) for job, fp in pending}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for f in done:
                job, fp = futures[f]
                try:
                    outcome = f.result()
                except Exception as e:
                    outcome = e
                yield job, fp, outcome
    except BaseException:
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_workers(pool) -> None:
    """The driver is stopping: each worker gets SIGTERM (its job checkpoints), then
    ``STOP_GRACE`` seconds, then SIGKILL."""
    processes = list(getattr(pool, "_processes", {}).values())
    for p in processes:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1)
    pool.shutdown(wait=False, cancel_futures=True)


def ray_client(address: str):
    """Ray, started or joined: ``auto`` (a running cluster on this machine, else a new local
    one), ``local`` (a new local one) or ``host:port`` / ``ray://host:port``."""
    import socket

    try:
        import ray
    except ImportError:
        raise BadInput("--ray needs Ray: pip install 'nst-onnx[ray]'") from None
    if ray.is_initialized():
        return ray
    if address not in ("auto", "local"):
        hostport = address.split("://")[-1]
        host, _, port = hostport.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
        except (OSError, ValueError):
            raise BadInput(f"cannot reach Ray at {address}: is `ray start --head` running "
                           "there, and the port open?") from None
    try:
        if address == "local":
            ray.init(log_to_driver=False, include_dashboard=False)
        elif address == "auto":
            try:
                ray.init(address="auto", log_to_driver=False)
            except ConnectionError:
                ray.init(log_to_driver=False, include_dashboard=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except Exception as e:
        raise BadInput(f"cannot start or join Ray at {address}: {one_line(e)}") from None
    return ray


def run_ray(ray, pending, payload, model_dir: Path, model: dict, engine: EngineOptions):
    """Ray tasks: the model's files travel once (the object store), inputs as bytes,
    outputs come back as bytes; each task asks for its threads (and a GPU: see
    :func:`ray_gpus`); Ray itself retries a task whose worker died (twice)."""
    threads = engine.threads or 2
    files = {name: (model_dir / name).read_bytes() for name in model["files"]}
    files["manifest.json"] = (model_dir / "manifest.json").read_bytes()
    models = ray.put({"sha": model["files"]["loss.onnx"]["sha256"][:16], "key": model["key"],
                      "files": files})
    task = ray.remote(num_cpus=threads, num_gpus=ray_gpus(engine.device, ray.cluster_resources()),
                      max_retries=2, retry_exceptions=False)(_ray_execute)
    refs = {task.remote(payload(job, fp), models): (job, fp) for job, fp in pending}
    remaining = list(refs)
    try:
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            for ref in done:
                job, fp = refs[ref]
                try:
                    outcome = ray.get(ref)
                except Exception as e:
                    outcome = e
                yield job, fp, outcome
    except BaseException:
        for ref in remaining:
            ray.cancel(ref, force=True)
        raise


def ray_gpus(device: str, cluster: dict) -> int:
    """GPUs one Ray task asks for: one with ``cuda``, and with ``auto`` when the cluster has
    any — otherwise every task on a GPU node would pick the device by itself and share it
    unscheduled. (``--device cpu`` keeps a mixed cluster's CPU-only nodes busy too.)"""
    return 1 if device == "cuda" or (device == "auto" and cluster.get("GPU", 0) >= 1) else 0


def _ray_execute(payload: dict, models: dict) -> dict:
    return execute(payload | {"models": models})
