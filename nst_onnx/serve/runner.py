"""Where ``nst serve``'s jobs run: one worker process per device (the event loop never
blocks on a job), fed one job at a time by a thread of the server.

Running a job *is* ``nst batch``'s job execution: each job is a one-line jobs file handed to
:func:`nst_onnx.batch.batch`, which fingerprints it (an identical request is answered from
its earlier output), runs it with checkpoints, writes the output atomically and appends its
line to ``manifest.jsonl``. A cancel is the SIGINT ``nst batch`` stops on (the job keeps its
checkpoint); a job interrupted by a dying server resumes from that checkpoint on restart.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..config import EngineOptions, LossSpec
from .store import WORKER_LOCK, JobStore, hold_lock

CANCEL_POLL = 0.25  # seconds: how soon a cancel or a dead worker is seen
PREVIEW_EVERY = 0.5  # seconds between a job's preview pictures


def _worker_main(jobs, events, parent: int, outdir: str) -> None:
    """The worker process: jobs in, batch events out. Signals outside a job are ignored
    (``batch`` installs its own handlers while it runs); the worker leaves with its server.
    It first waits for the folder's worker lock: the worker of a server killed with
    ``kill -9`` is still writing its job's checkpoint, and the job must resume from it, not
    run twice at once."""
    from ..batch import batch
    from ..batch.workers import one_line

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    hold_lock(Path(outdir) / WORKER_LOCK, wait=True)  # held until this process ends
    busy = threading.Event()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)  # a running job checkpoints and stops
        deadline = time.monotonic() + 60
        while busy.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()
    while (msg := jobs.get()) is not None:
        busy.set()
        try:
            r = batch(jobs_file=msg["jobs_file"], outdir=msg["outdir"], engine=msg["engine"],
                      spec=msg["spec"], workers=1, preview_every=PREVIEW_EVERY, sheet=False,
                      log=lambda m: None, progress=events.put)
            events.put({"event": "finished", "records": r.records,
                        "interrupted": r.interrupted is not None})
        except Exception as e:  # planning refused it: this job fails alone
            events.put({"event": "finished", "error": one_line(e)})
        finally:
            busy.clear()


class Runner(threading.Thread):
    """Takes queued jobs in order, one at a time, to the worker process; records what it
    reports in the store and tells ``notify(job_id, event)`` (the SSE streams)."""

    def __init__(self, store: JobStore, outdir: Path, engine: EngineOptions, spec: LossSpec,
                 notify: Callable[[str, dict], None]):
        super().__init__(daemon=True, name="nst-serve-runner")
        self.store, self.outdir, self.engine, self.spec = store, outdir, engine, spec
        self.notify = notify
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.process = None
        self._cancel: str | None = None  # the running job's id, once a cancel asked for it

    def run(self) -> None:
        while not self.stopping.is_set():
            job = self.store.next_queued()
            if job is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                self._run_job(job)
            except Exception as e:  # the worker could not start, the disk is full, …
                from ..batch.workers import one_line

                self._end(job["id"], "failed", reason=one_line(e))

    def stop(self) -> None:
        """Stop taking jobs; the running one checkpoints (it is queued again on restart)."""
        self.stopping.set()
        self.wake.set()
        if self.process is not None and self.process.is_alive():
            os.kill(self.process.pid, signal.SIGINT)
            self.jobs.put(None)  # after the job at hand, the worker leaves
            self.process.join(30)
            if self.process.is_alive():
                self.process.kill()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(10)  # it records the stopped job as queued before the store closes

    def cancel(self, job_id: str) -> None:
        """Stop the running job ``job_id`` (the store has its cancel flag, for a restart)."""
        self._cancel = job_id

    def _worker(self):
        import multiprocessing as mp

        if self.process is None or not self.process.is_alive():
            ctx = mp.get_context("spawn")
            self.jobs, self.events = ctx.Queue(), ctx.Queue()
            self.process = ctx.Process(target=_worker_main, daemon=True, args=(
                self.jobs, self.events, os.getpid(), str(self.outdir)))
            self.process.start()
        return self.process

    def _run_job(self, job: dict) -> None:
        job_id = job["id"]
        self.store.update(job_id, state="running", started=time.time())
        self.notify(job_id, {"event": "state", "state": "running"})
        worker = self._worker()
        self.jobs.put({"jobs_file": str(self._jobs_file(job)), "outdir": str(self.outdir),
                       "engine": self.engine, "spec": self.spec})
        signalled = 0.0
        while True:
            if self._cancel == job_id and time.monotonic() - signalled > 2:
                os.kill(worker.pid, signal.SIGINT)  # again, should the first miss
                signalled = time.monotonic()
            try:
                event = self.events.get(timeout=CANCEL_POLL)
            except queue.Empty:
                if not worker.is_alive():
                    return self._end(job_id, "failed", reason="its worker process died "
                                     "(killed by the system, perhaps for lack of memory)")
                continue
            if event["event"] == "iteration":
                self.store.update(job_id, iteration=event["iteration"],
                                  iterations=event["iterations"], loss=event["loss"])
                self.notify(job_id, {k: event[k] for k in
                                     ("event", "iteration", "iterations", "loss")})
            elif event["event"] == "finished":
                return self._finished(job_id, event)

    def _jobs_file(self, job: dict) -> Path:
        """The job as a one-line jobs file (what ``nst batch --jobs`` reads)."""
        req = job["request"]
        row = {"content": req["content"], "styles": req["styles"], "output": job["output"],
               **req["settings"]}
        path = self.outdir / "jobs" / f"{job['id']}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(row) + "\n")
        return path

    def _finished(self, job_id: str, event: dict) -> None:
        if "error" in event:
            return self._end(job_id, "failed", reason=event["error"])
        record = event["records"][0] if event["records"] else None
        if event["interrupted"] or record is None:
            if self._cancel == job_id:
                return self._end(job_id, "cancelled", reason="cancelled while running "
                                 "(its checkpoint is kept: submit it again to continue)")
            self.store.update(job_id, state="queued")  # the server is stopping
            return None
        if record["status"] == "failed":
            return self._end(job_id, "failed", record=record, reason=record["reason"])
        return self._end(job_id, "done", record=record)

    def _end(self, job_id: str, state: str, **fields) -> None:
        self.store.update(job_id, state=state, finished=time.time(), **fields)
        self.notify(job_id, {"event": "state", "state": state,
                             **({"reason": fields["reason"]} if fields.get("reason") else {})})
