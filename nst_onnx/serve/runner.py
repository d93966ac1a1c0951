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
from dataclasses import replace
from pathlib import Path

from ..config import EngineOptions, LossSpec
from .store import WORKERS_LOCK, JobStore, hold_lock

CANCEL_POLL = 0.25  # seconds: how soon a cancel or a dead worker is seen
PREVIEW_EVERY = 0.5  # seconds between a job's preview pictures


def _worker_main(jobs, events, parent: int, outdir: str) -> None:
    """The worker process: jobs in, batch events out. Signals outside a job are ignored
    (``batch`` installs its own handlers while it runs); the worker leaves with its server.
    It holds the folder's workers lock, shared with the other workers of its server, for as
    long as it lives (see :meth:`Runner.start`)."""
    from ..batch import batch
    from ..batch.workers import one_line

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    hold_lock(Path(outdir) / WORKERS_LOCK, wait=True, shared=True)  # until this process ends
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


class Runner:
    """Takes queued jobs in submission order to ``workers`` worker processes, each running
    one job at a time (a slot: a thread of the server feeding its process); records what
    they report in the store and tells ``notify(job_id, event)`` (the SSE streams)."""

    def __init__(self, store: JobStore, outdir: Path, engine: EngineOptions, spec: LossSpec,
                 notify: Callable[[str, dict], None], workers: int = 1):
        self.store, self.notify, self.outdir = store, notify, outdir
        self.bell = threading.Condition()
        self.stopping = threading.Event()
        self.cancelled: set[str] = set()  # running jobs a cancel asked to stop
        if workers > 1 and not engine.threads:  # the cores shared out, as nst batch does
            from ..run.sessions import physical_cores

            engine = replace(engine, threads=max(1, physical_cores() // workers))
        self.slots = [_Slot(self, k, outdir, engine, spec) for k in range(workers)]

    def start(self) -> None:
        """The slots start once the workers of an earlier server are gone: after a ``kill -9``
        they notice within a second, checkpoint their jobs and leave, and those jobs (queued
        again) must resume from those checkpoints, not run twice at once. Each worker holds
        the workers lock shared; here it is taken exclusively, which waits for them."""
        def gate() -> None:
            fd = hold_lock(self.outdir / WORKERS_LOCK, wait=True)
            os.close(fd)
            if not self.stopping.is_set():
                for slot in self.slots:
                    slot.start()
        threading.Thread(target=gate, daemon=True, name="nst-serve-gate").start()

    def wake(self) -> None:
        """A job was queued."""
        with self.bell:
            self.bell.notify_all()

    def stop(self) -> None:
        """Stop taking jobs; the running ones checkpoint (they are queued again on restart)."""
        self.stopping.set()
        self.wake()
        for slot in self.slots:
            slot.interrupt()
        for slot in self.slots:
            slot.finish()

    def cancel(self, job_id: str) -> None:
        """Stop the running job ``job_id`` (the store has its cancel flag, for a restart)."""
        self.cancelled.add(job_id)


class _Slot(threading.Thread):
    """One worker process and the thread that feeds it jobs, one at a time."""

    def __init__(self, runner: Runner, index: int, outdir: Path, engine: EngineOptions,
                 spec: LossSpec):
        super().__init__(daemon=True, name=f"nst-serve-slot-{index}")
        self.runner, self.store, self.notify = runner, runner.store, runner.notify
        self.index, self.outdir, self.engine, self.spec = index, outdir, engine, spec
        self.process = None

    def run(self) -> None:
        while not self.runner.stopping.is_set():
            job = self.store.claim_next()
            if job is None:
                with self.runner.bell:
                    self.runner.bell.wait(1.0)
                continue
            try:
                self._run_job(job)
            except Exception as e:  # the worker could not start, the disk is full, …
                from ..batch.workers import one_line

                self._end(job["id"], "failed", reason=one_line(e))

    def interrupt(self) -> None:
        if self.process is not None and self.process.is_alive():
            os.kill(self.process.pid, signal.SIGINT)
            self.jobs.put(None)  # after the job at hand, the worker leaves

    def finish(self) -> None:
        if self.process is not None:
            self.process.join(30)
            if self.process.is_alive():
                self.process.kill()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(10)  # it records the stopped job as queued before the store closes

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
        self.notify(job_id, {"event": "state", "state": "running"})
        worker = self._worker()
        self.jobs.put({"jobs_file": str(self._jobs_file(job)), "outdir": str(self.outdir),
                       "engine": self.engine, "spec": self.spec})
        signalled = 0.0
        while True:
            if job_id in self.runner.cancelled and time.monotonic() - signalled > 2:
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
            if job_id in self.runner.cancelled:
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
