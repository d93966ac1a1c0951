"""What ``nst serve`` runs with: the command line's options, checked in one place. No
Starlette here, so a missing ``[serve]`` extra is one line, not a traceback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import EngineOptions, LossSpec
from ..errors import BadInput

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeOptions:
    """What ``nst serve`` runs with (the CLI's options)."""

    outdir: Path = Path("nst-serve")
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # required off loopback (generated there when not given)
    max_upload_mb: float = 50.0
    engine: EngineOptions = field(default_factory=EngineOptions)
    spec: LossSpec = field(default_factory=LossSpec)
    allowed_hosts: tuple[str, ...] = ()  # more Host names to accept (a proxy's, tests')
    checkpoint_every: float = 20.0  # seconds: what a job loses at most to a dying server
    workers: int | None = None  # jobs running at once; None: worker_count()'s rule

    @property
    def hosts(self) -> set[str]:
        bound = () if self.host in ("0.0.0.0", "::") else (self.host,)
        return {*LOOPBACK, *bound, *self.allowed_hosts}

    def validate(self) -> None:
        self.engine.validate()
        if not 0 < self.port < 65536:
            raise BadInput("--port must be between 1 and 65535")
        if not self.max_upload_mb > 0:
            raise BadInput("--max-upload-mb must be > 0")
        if self.workers is not None and self.workers < 1:
            raise BadInput("--workers must be ≥ 1")

    def worker_count(self) -> int:
        """``--workers``, else ``nst batch``'s rule: one job per two physical cores (``--threads``
        each, when given) as the memory allows at the default size, one on a GPU. Each job's
        own memory check is batch's, at its start."""
        if self.workers:
            return self.workers
        from ..batch.workers import default_workers
        from ..config import RunOptions
        from ..run.sessions import physical_cores

        return default_workers(self.engine, RunOptions(), jobs=physical_cores())
