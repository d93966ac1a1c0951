"""``nst serve``: a local web page to stylise with a live preview, a job queue that outlives
restarts, and a gallery of finished jobs (:mod:`.app`: routes and guards; :mod:`.runner`:
jobs run by ``nst batch``'s execution in a worker process; :mod:`.store`: the SQLite queue).
Needs the ``[serve]`` extra (Starlette, uvicorn, python-multipart)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from ..errors import BadInput
from .options import LOOPBACK, ServeOptions

__all__ = ["ServeOptions", "create_app", "serve"]


def create_app(options: ServeOptions, start_runner: bool = True):
    try:
        from .app import create_app as make
    except ImportError as e:
        raise BadInput(f"nst serve needs its extra ({e.name} is missing): pip install "
                       "'nst-onnx[serve]'") from None
    return make(options, start_runner)


def serve(options: ServeOptions, open_browser: bool = False,
          log: Callable[[str], None] = print) -> None:
    """Run the server until Ctrl-C; off loopback, a token is required (one is made and
    printed with the URL when none is given, as Jupyter does)."""
    options.validate()
    app = create_app(options)  # first: a missing extra is its one line
    import uvicorn

    if options.host not in LOOPBACK and not options.token:
        options.token = secrets.token_urlsafe(24)
    shown = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{options.port}/" + (
        f"?token={options.token}" if options.token else "")
    n = len(app.server.runner.slots)
    log(f"nst serve: {url}  (jobs and results in {options.outdir}, {n} at a time; Ctrl-C "
        "stops, queued jobs wait for the next start)")
    if app.server.requeued:
        log(f"nst serve: {app.server.requeued} interrupted job(s) queued again (they resume "
            "from their checkpoints)")
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning",
                timeout_graceful_shutdown=5)
