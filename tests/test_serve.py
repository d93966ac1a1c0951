"""nst serve: the JSON API end to end (a real worker process running batch's jobs), the queue
across restarts, and every bad input answered by a one-line 4xx with nothing written."""

from __future__ import annotations

import io
import json
import sqlite3
import time

import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from nst_onnx.config import EngineOptions  # noqa: E402
from nst_onnx.serve import ServeOptions, create_app  # noqa: E402

PAIR = {"content_example": "tubingen.jpg", "style_example": "starry_night.jpg"}


def options(models_dir, tmp_path, **kw) -> ServeOptions:
    return ServeOptions(outdir=tmp_path / "serve", allowed_hosts=("testserver",),
                        engine=EngineOptions(models_dir=str(models_dir), threads=1),
                        **{"workers": 1, **kw})


def submit(client, settings: dict, files=None, **fields):
    return client.post("/api/jobs", data={**PAIR, **fields, "settings": json.dumps(settings)}
                       if files is None else {**fields, "settings": json.dumps(settings)},
                       files=files)


def events(client, job_id: str) -> list[dict]:
    out = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


def wait(client, job_id: str, until, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if until(job):
            return job
        assert time.time() < deadline, job
        time.sleep(0.05)


def test_a_job_end_to_end_then_answered_from_the_gallery(models_dir, tmp_path):
    opts = options(models_dir, tmp_path)
    with TestClient(create_app(opts)) as c:
        r = submit(c, {"size": 48, "iterations": 8})
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["state"] == "queued" and job["settings"] == {"size": 48, "iterations": 8}
        seen = events(c, job["id"])
        assert seen[-1]["event"] == "state" and seen[-1]["state"] == "done", seen[-1]
        its = [e["iteration"] for e in seen if e["event"] == "iteration"]
        assert its == sorted(its) and its[-1] == 8
        preview = c.get(job["links"]["preview"])
        assert preview.status_code == 200
        result = c.get(job["links"]["result"])
        img = Image.open(io.BytesIO(result.content))
        assert img.format == "PNG" and max(img.size) == 48
        assert "nst-onnx" in img.info  # its settings travel with it
        assert "attachment" in result.headers["content-disposition"]
        lines = [json.loads(x) for x in (opts.outdir / "manifest.jsonl").read_text().splitlines()]
        assert [x["status"] for x in lines] == ["done"]
        # the same request again: batch finds it done, nothing is computed
        again = submit(c, {"size": 48, "iterations": 8}).json()
        done = wait(c, again["id"], lambda j: j["state"] == "done")
        assert done["result"]["status"] == "skipped"
        assert c.get(done["links"]["result"]).content == result.content
        listed = c.get("/api/jobs").json()["jobs"]
        assert [j["id"] for j in listed] == [again["id"], job["id"]]  # newest first
    # the manifest is the record: without the database, the gallery still shows the result
    for f in opts.outdir.glob("jobs.sqlite*"):
        f.unlink()
    app = create_app(opts, start_runner=False)
    assert app.server.adopted == 1
    with TestClient(app) as c:
        shown, = c.get("/api/jobs").json()["jobs"]
        assert shown["state"] == "done" and shown["names"] == {
            "content": ["tubingen.jpg"], "styles": ["starry_night.jpg"]}
        assert {"size": 48, "iterations": 8}.items() <= shown["settings"].items()
        assert shown["result"]["iterations"] == 8
        assert c.get(shown["links"]["result"]).content == result.content
    app = create_app(opts, start_runner=False)
    with TestClient(app):
        assert app.server.adopted == 0  # once


def test_cancel_a_queued_and_a_running_job_keeps_the_queue_order(models_dir, tmp_path):
    with TestClient(create_app(options(models_dir, tmp_path))) as c:
        a = submit(c, {"size": 48, "iterations": 400}).json()
        b = submit(c, {"size": 48, "iterations": 3}).json()
        x = submit(c, {"size": 48, "iterations": 5}).json()
        gone = c.delete(f"/api/jobs/{x['id']}")
        assert gone.status_code == 200 and gone.json()["state"] == "cancelled"
        wait(c, a["id"], lambda j: j["iteration"] >= 1)
        assert c.get(f"/api/jobs/{b['id']}").json()["state"] == "queued"  # one at a time
        assert c.delete(f"/api/jobs/{a['id']}").status_code == 202
        a = wait(c, a["id"], lambda j: j["state"] == "cancelled")
        assert "checkpoint" in a["reason"]
        b = wait(c, b["id"], lambda j: j["state"] == "done")
        assert b["started"] >= a["finished"] - 1e-3
        assert c.get(f"/api/jobs/{x['id']}").json()["started"] is None


def test_a_restart_resumes_the_interrupted_job_from_its_checkpoint(models_dir, tmp_path):
    opts = options(models_dir, tmp_path, checkpoint_every=0.2)
    with TestClient(create_app(opts)) as c:
        job = submit(c, {"size": 48, "iterations": 60}).json()
        wait(c, job["id"], lambda j: j["iteration"] >= 5)
        time.sleep(0.5)
    # the server stopped mid-job; a kill -9 would also have left it "running" in the database
    with sqlite3.connect(opts.outdir / "jobs.sqlite") as db:
        state, = db.execute("SELECT state FROM jobs").fetchone()
        assert state == "queued"
        db.execute("UPDATE jobs SET state = 'running'")
    assert list(opts.outdir.glob(".*.ckpt.npz"))
    app = create_app(opts)
    assert app.server.requeued == 1
    with TestClient(app) as c:
        done = wait(c, job["id"], lambda j: j["state"] in ("done", "failed"))
        assert done["state"] == "done", done
    rec = json.loads((opts.outdir / "manifest.jsonl").read_text().splitlines()[-1])
    assert rec["iterations"] == 60 and rec["resumed"]["iterations_before"] >= 5
    with sqlite3.connect(opts.outdir / "jobs.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _png(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # 400 Mpx in a few kB
    return buf.getvalue()


STYLE = {"style_example": "starry_night.jpg"}
BAD = [
    ("not an image", dict(files={"content": ("a.png", b"hello")}, data=STYLE), 400,
     "not a readable image"),
    ("truncated", dict(files={"content": ("a.png", _png()[:60])}, data=STYLE), 400,
     "not a readable image"),
    ("bomb", dict(files={"content": ("a.png", _bomb())}, data=STYLE), 400, "safety limit"),
    ("over the limit", dict(files={"content": ("a.png", b"x" * 300_000)}, data=STYLE), 413,
     "limit"),
    ("unknown setting", dict(data={**PAIR, "settings": '{"sizes": 3}'}), 400, "unknown setting"),
    ("invalid setting", dict(data={**PAIR, "settings": '{"style_weight": -1}'}), 400, "style"),
    ("setting not taken", dict(data={**PAIR, "settings": '{"max_image_pixels": 1e12}'}), 400,
     "not taken here"),
    ("a path as init", dict(data={**PAIR, "settings": '{"init": "/etc/passwd"}'}), 400,
     "no paths"),
    ("malformed JSON", dict(data={**PAIR, "settings": "{size: 3"}), 400, "not JSON"),
    ("not an object", dict(data={**PAIR, "settings": "[1]"}), 400, "JSON object"),
    ("no content", dict(data={**STYLE, "settings": "{}"}), 400, "one content image"),
    ("unknown example", dict(data={**STYLE, "content_example": "../../etc/passwd"}), 400,
     "content_example"),
    ("malformed multipart", dict(content=b"--x\r\nnonsense", headers={
        "content-type": "multipart/form-data; boundary=x"}), 400, "content"),
]


@pytest.mark.parametrize("case, request_, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_one_line_4xx_and_writes_nothing(models_dir, tmp_path, case, request_,
                                                        status, message):
    opts = options(models_dir, tmp_path, max_upload_mb=0.2)
    app = create_app(opts, start_runner=False)
    with TestClient(app) as c:
        r = c.post("/api/jobs", **request_)
        assert r.status_code == status, r.text
        body = r.json()
        assert list(body) == ["error"] and "\n" not in body["error"], body
        assert message in body["error"]
        assert c.get("/api/jobs").json()["jobs"] == []
    assert list((opts.outdir / "uploads").iterdir()) == []


def test_the_guards(models_dir, tmp_path):
    opts = options(models_dir, tmp_path, token="s3cret", host="0.0.0.0")
    with TestClient(create_app(opts, start_runner=False)) as c:
        assert c.get("/api/jobs").status_code == 401
        assert c.get("/api/jobs?token=wrong").status_code == 401
        assert c.get("/api/jobs", headers={"authorization": "Bearer s3cret"}).status_code == 200
        page = c.get("/?token=s3cret")
        assert page.status_code == 200 and "nst_token" in page.headers["set-cookie"]
        assert c.get("/api/jobs").status_code == 200  # the cookie the page got
        for headers in ({"host": "attacker.example"}, {"origin": "http://attacker.example"},
                        {"origin": "http://testserver:9999"}):
            r = c.post("/api/jobs", data=PAIR, headers=headers)
            assert r.status_code == 403 and "error" in r.json(), headers
        for path in ("/api/jobs/nope", "/api/jobs/nope/events", "/api/jobs/nope/preview",
                     "/api/jobs/nope/result", "/static/../../pyproject.toml", "/nothing"):
            r = c.get(path)
            assert r.status_code == 404 and list(r.json()) == ["error"], path
        assert c.delete("/api/jobs/nope").status_code == 404
        assert c.get("/static/app.js").headers["content-type"].startswith("text/javascript")


def test_a_second_server_on_the_same_folder_is_refused(models_dir, tmp_path):
    from nst_onnx.errors import BadInput

    opts = options(models_dir, tmp_path)
    with TestClient(create_app(opts, start_runner=False)):
        with pytest.raises(BadInput, match="another nst serve is using"):
            create_app(opts, start_runner=False)
    with TestClient(create_app(opts, start_runner=False)) as c:  # free again once it stopped
        assert c.get("/api/jobs").status_code == 200


def test_two_workers_run_two_jobs_at_once_and_the_third_waits(models_dir, tmp_path):
    opts = options(models_dir, tmp_path, workers=2)
    with TestClient(create_app(opts)) as c:
        a, b, x = (submit(c, {"size": 48, "iterations": n}).json() for n in (300, 301, 4))
        wait(c, a["id"], lambda j: j["iteration"] >= 1)
        wait(c, b["id"], lambda j: j["iteration"] >= 1)  # both at once
        assert c.get(f"/api/jobs/{x['id']}").json()["state"] == "queued"
        for j in (a, b):
            c.delete(f"/api/jobs/{j['id']}")
        x = wait(c, x["id"], lambda j: j["state"] == "done")
        assert x["result"]["iterations"] == 4
        assert {c.get(f"/api/jobs/{j['id']}").json()["state"] for j in (a, b)} == {"cancelled"}
