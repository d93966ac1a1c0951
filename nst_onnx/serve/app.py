"""``nst serve``'s HTTP side: the page, the JSON API it uses, and the guards that make it
safe to leave running (docs/design.md, "nst serve").

* Files are served only by job id (or from a fixed list: the page's own files, the bundled
  examples); no path is ever taken from a URL or a form field.
* Uploads are capped while they arrive, decoded by the same hardened loader as the CLI's
  inputs (a bomb is refused from its header) and kept by their SHA-256; settings go through
  the jobs file's validation (``batch.row_settings``).
* Host and Origin are checked on every request (DNS rebinding, cross-site POSTs); off
  loopback a token is required too.
* Every error is a 4xx with a one-line JSON ``{"error": …}``; nothing is written for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..batch import preview_path, row_settings
from ..batch.manifest import read_manifest
from ..batch.workers import one_line
from ..config import INITS, JOB_SETTINGS, LossWeights, RunOptions
from ..errors import BadInput
from ..io.atomic import write_bytes
from ..io.images import EncodedImage, load_image
from .options import ServeOptions
from .runner import Runner
from .store import ENDED, JobStore

STATIC = Path(__file__).with_name("static")
PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # a source checkout's
EXAMPLE_NAMES = ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg")
REFUSED_SETTINGS = {"max_image_pixels": "the server's upload limit decides it",
                    "checkpoint_every": "the server checkpoints every job"}
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status)


class Guard:
    """ASGI middleware: Host, Origin, token and the upload cap, before any route runs."""

    def __init__(self, app, options: ServeOptions):
        self.app, self.options = app, options

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        problem = self._check(request)
        if problem:
            return await _error(*problem)(scope, receive, send)
        limit = int(self.options.max_upload_mb * 1e6)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return await _error(413, f"upload over the {self.options.max_upload_mb:g} MB "
                                     "limit (--max-upload-mb)")(scope, receive, send)
        seen = 0

        async def capped():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise Refused(413, f"upload over the {self.options.max_upload_mb:g} MB limit "
                                   "(--max-upload-mb)")
            return message
        try:
            await self.app(scope, capped, self._with_cookie(request, send))
        except Refused as e:
            await _error(e.status, str(e))(scope, receive, send)

    def _check(self, request: Request) -> tuple[int, str] | None:
        host = urlsplit("//" + request.headers.get("host", ""))
        if (host.hostname or "") not in self.options.hosts:
            return 403, f"Host {host.hostname or ''!r} is not this server's (DNS rebinding?)"
        origin = request.headers.get("origin")
        if origin and origin != "null":
            o = urlsplit(origin)
            if o.hostname not in self.options.hosts or (o.port or 80) != (host.port or 80):
                return 403, f"requests from {origin} are refused (another site)"
        token = self.options.token
        if token:
            given = (request.query_params.get("token")
                     or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                     or request.cookies.get("nst_token", ""))
            if not secrets.compare_digest(given.encode(), token.encode()):
                return 401, "missing or wrong token (the URL nst serve printed has it)"
        return None

    def _with_cookie(self, request: Request, send):
        """The page opened with ``?token=`` keeps the token as a cookie for its own calls."""
        if not (self.options.token and request.query_params.get("token")):
            return send

        async def wrapped(message):
            if message["type"] == "http.response.start":
                cookie = f"nst_token={self.options.token}; Path=/; HttpOnly; SameSite=Strict"
                message = message | {"headers": [*message.get("headers", []),
                                                  (b"set-cookie", cookie.encode())]}
            await send(message)
        return wrapped


class Server:
    """The store, the runner and the SSE subscribers behind the routes."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.outdir = Path(options.outdir)
        self.uploads = self.outdir / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.outdir)
        self.requeued = self.store.requeue_interrupted()
        self.adopted = self.adopt_manifest()
        self.subscribers: dict[str, set[asyncio.Queue]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runner = Runner(self.store, self.outdir, options.engine, options.spec,
                             self.notify, options.worker_count())

    def notify(self, job_id: str, event: dict) -> None:
        """From the runner's thread to every stream of that job."""
        if self.loop is None:
            return
        for q in list(self.subscribers.get(job_id, ())):
            self.loop.call_soon_threadsafe(q.put_nowait, event)

    def adopt_manifest(self) -> int:
        """The output folder's ``manifest.jsonl`` is the record of what was made; the database
        is the queue. A finished result the database lacks (it was deleted, or ``nst batch
        -o`` wrote into this folder) joins the gallery as a done job, with its settings."""
        known, outdir, adopted = self.store.outputs(), self.outdir.resolve(), 0
        for rec in read_manifest(self.outdir, status="done").values():
            try:
                out = Path(rec["output"])
                if out.name in known or out.parent.resolve() != outdir or not out.is_file():
                    continue
                settings = {k: v for k, v in rec["settings"].items() if v is not None
                            and k in JOB_SETTINGS and k not in REFUSED_SETTINGS}
                names = {"content": [Path(rec["content"]).name],
                         "styles": [Path(x).name for x in rec["styles"]]}
                finished = out.stat().st_mtime
                started = finished - float(rec.get("seconds") or 0)
            except (KeyError, TypeError, ValueError, AttributeError, OSError):
                continue  # a line of another shape: not a result we can show
            self.store.add({"content": rec["content"], "styles": rec["styles"],
                            "settings": settings, "names": names}, out.name, state="done",
                           created=started, started=started, finished=finished, record=rec,
                           iteration=rec.get("iterations") or 0,
                           iterations=rec.get("iterations"), loss=rec.get("final_loss"))
            known.add(out.name)
            adopted += 1
        return adopted

    # ------------------------------------------------------------------ submitting a job

    async def submit(self, request: Request) -> dict:
        try:
            form = await request.form(max_files=16, max_fields=64,
                                      max_part_size=int(self.options.max_upload_mb * 1e6))
        except Refused:
            raise
        except Exception as e:  # malformed multipart
            raise Refused(400, f"not a valid multipart form ({one_line(e)})") from None
        try:
            contents = [await self._image(v, "content") for v in form.getlist("content")]
            contents += [self._example(v, "content") for v in form.getlist("content_example")]
            styles = [await self._image(v, "style") for v in form.getlist("style")]
            styles += [self._example(v, "style") for v in form.getlist("style_example")]
            if len(contents) != 1:
                raise BadInput("give one content image (content or content_example)")
            if not styles:
                raise BadInput("give at least one style image (style or style_example)")
            settings = self._settings(form.get("settings") or "{}", len(styles))
            fmt = str(form.get("format") or "png")
            if fmt not in ("png", "tif"):
                raise BadInput("format: png or tif")
        finally:
            await form.close()
        request_ = {"content": contents[0], "styles": styles, "settings": settings,
                    "names": {"content": _shown(form, "content"), "styles": _shown(form, "style")}}
        # identical requests share an output: batch answers the second from the first
        key = hashlib.sha256(json.dumps([contents, styles, settings, fmt],
                                        sort_keys=True).encode()).hexdigest()[:16]
        job = self.store.add(request_, f"{key}.{fmt}")
        self.runner.wake()
        return job

    async def _image(self, upload, what: str) -> str:
        """An uploaded file, decoded once here (the hardened loader) and kept by its hash."""
        if isinstance(upload, str):
            raise BadInput(f"{what}: expected a file upload")
        data = await upload.read()
        load_image(EncodedImage(_safe_name(upload.filename), data), what)  # refused, or safe
        path = self.uploads / (hashlib.sha256(data).hexdigest() + ".img")  # decoded by content
        if not path.exists():
            write_bytes(path, data)
        return str(path.resolve())

    def _example(self, name, what: str) -> str:
        if name not in EXAMPLE_NAMES or not (EXAMPLES / name).is_file():
            raise BadInput(f"{what}_example: one of {', '.join(examples())}")
        return str((EXAMPLES / name).resolve())

    def _settings(self, text, styles: int) -> dict:
        try:
            settings = json.loads(text)
        except ValueError as e:
            raise BadInput(f"settings: not JSON ({e.msg})") from None
        if not isinstance(settings, dict):
            raise BadInput("settings: expected a JSON object of setting name → value")
        for key, why in REFUSED_SETTINGS.items():
            if key in settings:
                raise BadInput(f"setting {key!r} is not taken here: {why}")
        if settings.get("init") not in (None, *INITS):
            raise BadInput(f"init: one of {', '.join(INITS)} (no paths)")
        settings = dict(settings, checkpoint_every=self.options.checkpoint_every)
        row_settings(dict(settings), RunOptions(), LossWeights(), styles, self.outdir)
        return settings

    # ------------------------------------------------------------------ reading jobs

    def job(self, job_id: str) -> dict:
        job = self.store.get(job_id)
        if job is None:
            raise Refused(404, f"no job {job_id[:40]!r}")
        return job

    def view(self, job: dict) -> dict:
        """A job as the API shows it (no server paths)."""
        req, rec = job["request"], job["record"] or {}
        elapsed = ((job["finished"] or time.time()) - job["started"]) if job["started"] else None
        it = job["iteration"] or 0
        spi = elapsed / it if elapsed and it else None
        eta = spi * (job["iterations"] - it) if spi and job["iterations"] and \
            job["state"] == "running" else None
        return {"id": job["id"], "state": job["state"], "created": job["created"],
                "started": job["started"], "finished": job["finished"], "iteration": it,
                "iterations": job["iterations"], "loss": job["loss"],
                "seconds_per_iteration": spi, "eta_seconds": eta,
                "settings": {k: v for k, v in req["settings"].items()
                             if k not in REFUSED_SETTINGS},  # what "again" may send back
                "names": req["names"],
                "reason": job["reason"], "result": {k: rec[k] for k in (
                    "status", "final_loss", "initial_loss", "iterations", "seconds",
                    "stop_reason", "fingerprint") if k in rec} or None,
                "links": {"self": f"/api/jobs/{job['id']}",
                          "events": f"/api/jobs/{job['id']}/events",
                          "preview": f"/api/jobs/{job['id']}/preview",
                          "result": f"/api/jobs/{job['id']}/result"}}

    def output(self, job: dict) -> Path:
        return self.outdir / job["output"]

    async def events(self, job_id: str):
        q: asyncio.Queue = asyncio.Queue()
        self.subscribers.setdefault(job_id, set()).add(q)
        try:
            job = self.job(job_id)
            yield _sse(self.view(job) | {"event": "state"})
            state = job["state"]
            while state not in ENDED:
                try:
                    event = await asyncio.wait_for(q.get(), KEEPALIVE)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    job = self.job(job_id)
                    state = job["state"]
                    continue
                if event["event"] == "state":
                    event = self.view(self.job(job_id)) | event
                    state = event["state"]
                yield _sse(event)
        finally:
            self.subscribers[job_id].discard(q)


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event)}\n\n"


def _safe_name(name) -> str:
    """An upload's own file name, for messages and the page only (never a path here)."""
    return "".join(c for c in Path(str(name or "upload")).name if c.isprintable())[:80] or "upload"


def _shown(form, field_name: str) -> list[str]:
    files = [_safe_name(v.filename) for v in form.getlist(field_name) if not isinstance(v, str)]
    return files + [str(v) for v in form.getlist(f"{field_name}_example")]


def examples() -> list[str]:
    return [n for n in EXAMPLE_NAMES if (EXAMPLES / n).is_file()]


def create_app(options: ServeOptions, start_runner: bool = True) -> Starlette:
    server = Server(options)

    def guarded(handler):
        async def route(request: Request):
            try:
                return await handler(request)
            except Refused as e:
                return _error(e.status, str(e))
            except BadInput as e:
                return _error(400, str(e))
        return route

    async def page(request):
        if request.path_params.get("name", "index.html") == "index.html":
            return FileResponse(STATIC / "index.html", media_type="text/html")
        name = request.path_params["name"]
        if name not in PAGE_FILES:
            raise Refused(404, "no such file")
        return FileResponse(STATIC / name, media_type=PAGE_FILES[name])

    async def list_examples(request):
        return JSONResponse({"examples": examples()})

    async def example(request):
        name = request.path_params["name"]
        if name not in examples():
            raise Refused(404, f"no example {name[:40]!r}")
        return FileResponse(EXAMPLES / name)

    async def create(request):
        return JSONResponse(server.view(await server.submit(request)), 201)

    async def list_jobs(request):
        return JSONResponse({"jobs": [server.view(j) for j in server.store.all()]})

    async def get_job(request):
        return JSONResponse(server.view(server.job(request.path_params["id"])))

    async def events(request):
        server.job(request.path_params["id"])  # 404 before the stream starts
        return StreamingResponse(server.events(request.path_params["id"]),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    async def preview(request):
        job = server.job(request.path_params["id"])
        out = server.output(job)
        if job["state"] == "done" and out.is_file():
            return FileResponse(out, headers={"Cache-Control": "no-store"})
        p = preview_path(out)
        if p.is_file():
            return Response(p.read_bytes(), media_type="image/jpeg",
                            headers={"Cache-Control": "no-store"})
        raise Refused(404, "no preview yet")

    async def result(request):
        job = server.job(request.path_params["id"])
        out = server.output(job)
        if job["state"] != "done" or not out.is_file():
            raise Refused(409, f"job {job['id']} is {job['state']}: no result")
        return FileResponse(out, filename=f"nst-{job['id']}{out.suffix}")

    async def cancel(request):
        job = server.job(request.path_params["id"])
        state = server.store.cancel(job["id"])
        if state == "running":
            server.runner.cancel(job["id"])
        server.notify(job["id"], {"event": "state", "state": state})
        return JSONResponse(server.view(server.job(job["id"])), 202 if state == "running"
                            else 200)

    @asynccontextmanager
    async def lifespan(app):
        server.loop = asyncio.get_running_loop()
        if start_runner:
            server.runner.start()
        try:
            yield
        finally:
            server.runner.stop()
            server.store.close()

    routes = [Route("/", guarded(page)), Route("/static/{name}", guarded(page)),
              Route("/api/examples", guarded(list_examples)),
              Route("/api/examples/{name}", guarded(example)),
              Route("/api/jobs", guarded(create), methods=["POST"]),
              Route("/api/jobs", guarded(list_jobs), methods=["GET"]),
              Route("/api/jobs/{id}", guarded(get_job), methods=["GET"]),
              Route("/api/jobs/{id}", guarded(cancel), methods=["DELETE"]),
              Route("/api/jobs/{id}/events", guarded(events)),
              Route("/api/jobs/{id}/preview", guarded(preview)),
              Route("/api/jobs/{id}/result", guarded(result))]
    app = Starlette(routes=routes, lifespan=lifespan)

    async def not_found(request, exc):
        return _error(getattr(exc, "status_code", 404), getattr(exc, "detail", "not found"))
    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_found)
    guard = Guard(app, options)
    guard.server = server
    return guard
