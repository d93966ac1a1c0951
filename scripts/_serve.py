"""A real ``nst serve`` process on a loopback port, for the browser test, the load benchmark
and the fault drill: started as a user starts it, waited for until it answers, stopped (or
killed) at the end. Jobs are submitted with httpx (the ``dev`` extra).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

PAIR = {"content_example": "tubingen.jpg", "style_example": "starry_night.jpg"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``nst serve --out OUTDIR`` on a free loopback port; ``start`` may be called again after
    ``kill`` (a restart on the same folder and port)."""

    def __init__(self, outdir: Path, models: Path | None = None, threads: int | None = None,
                 log: Path | None = None):
        self.outdir, self.port = Path(outdir), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "nst_onnx.cli", "serve", "--port", str(self.port),
                    "--out", str(self.outdir)]
        self.cmd += ["--models", str(models)] if models else []
        self.cmd += ["--threads", str(threads)] if threads else []
        self.log = log or self.outdir.with_name(self.outdir.name + ".log")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Server:
        self.outdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nst serve exited {self.process.returncode}: "
                                   f"{self.log.read_text()[-500:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/api/examples", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"nst serve did not answer within {timeout} s")

    def kill(self) -> None:
        """``kill -9``: nothing of the server runs its shutdown."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30) -> int:
        """Ctrl-C, as a user stops it."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def submit(self, settings: dict, **fields) -> dict:
        r = httpx.post(self.url + "/api/jobs", timeout=30,
                       data={**PAIR, **fields, "settings": json.dumps(settings)})
        r.raise_for_status()
        return r.json()

    def jobs(self) -> list[dict]:
        return httpx.get(self.url + "/api/jobs", timeout=30).json()["jobs"]

    def job(self, job_id: str) -> dict:
        return httpx.get(f"{self.url}/api/jobs/{job_id}", timeout=30).json()


@contextlib.contextmanager
def running(outdir: Path, **kw) -> Iterator[Server]:
    server = Server(outdir, **kw).start()
    try:
        yield server
    finally:
        server.stop()

