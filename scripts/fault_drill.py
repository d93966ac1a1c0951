"""Fault drill (issue 23): replays the slow faults a user's machine throws at a run and
prints a pass/fail table.

* ``kill9``: ``kill -9`` of ``nst stylize`` at N random moments of its run (a quarter of
  them in its last tenth, where the final save is), then the same command with
  ``--resume``: it must end with the full iteration count, the output whole, no checkpoint
  left;
* ``final-save``: ``kill -9`` the moment the output's temporary file appears (the final
  save itself); ``--resume`` must only write the output (0 new iterations);
* ``worker``: a ``--workers 2`` batch of 6 jobs with one worker killed (as the OOM killer
  would): 5 done, the sixth done on its retry or failed alone;
* ``sigterm``: SIGTERM to the batch driver: exit 143 within 10 s, no process left, and a
  re-run finishes every job (resuming from the checkpoints the workers wrote);
* ``orphans``: ``kill -9`` of the batch driver: its workers notice and leave;
* ``serve``: 20 queued 64 px jobs on a real ``nst serve --threads 1`` (one job per core at
  once), the server killed with ``kill -9`` twice mid-job and started again at once: all 20
  finish, each once (one manifest line each), every job that had begun when killed resumes
  from its checkpoint (not from scratch), the killed servers' workers leave, the database
  passes ``PRAGMA integrity_check``;
* ``disk-full``: a small tmpfs (where this machine may mount one) filled while a run goes:
  the failed final save names the kept checkpoint, and ``--resume`` after freeing space
  finishes; without a checkpoint the image goes to the temporary folder.

    python scripts/fault_drill.py                # all drills, 20 random kills
    python scripts/fault_drill.py --kills 5 --only kill9 final-save
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _bench  # paths, images folder, BLAS threads
from PIL import Image

NST = [sys.executable, "-m", "nst_onnx.cli"]
C, S = _bench.EXAMPLES / "tubingen.jpg", _bench.EXAMPLES / "starry_night.jpg"


def stylize(out: Path, *extra: str) -> list[str]:
    return [*NST, "stylize", str(C), str(S), "-o", str(out), "--threads", "1", "--quiet",
            *extra]


def run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def whole_image(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def ckpt_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.ckpt.npz")


# --------------------------------------------------------------------------- stylize


def drill_kill9(work: Path, kills: int, seed: int) -> tuple[bool, str]:
    iterations = 40
    args = ["--size", "64", "--iterations", str(iterations), "--checkpoint-every", "0.2"]
    t = time.perf_counter()
    run(stylize(work / "calibrate.png", *args))
    wall = time.perf_counter() - t
    rng = random.Random(seed)
    failures, resumed, restarted = [], 0, 0
    for k in range(kills):
        out = work / f"k{k}.png"
        moment = rng.uniform(0.85 * wall, 0.99 * wall) if k % 4 == 3 else rng.uniform(0.3, wall)
        proc = subprocess.Popen(stylize(out, *args))
        time.sleep(moment)
        proc.kill()
        proc.wait()
        if out.exists() and not whole_image(out):
            failures.append(f"kill {k} at {moment:.2f} s: a half-written output")
            continue
        if out.exists() and not ckpt_of(out).exists():
            continue  # it had finished: nothing to resume
        has_ckpt = ckpt_of(out).exists()
        again = run(stylize(out, *args, "--json", *(["--resume"] if has_ckpt else [])))
        resumed, restarted = resumed + has_ckpt, restarted + (not has_ckpt)
        ok = again.returncode == 0 and whole_image(out) and not ckpt_of(out).exists() \
            and last_json(again)["iterations"] == iterations
        if not ok:
            failures.append(f"kill {k} at {moment:.2f} s: {again.returncode} "
                            f"{again.stderr.strip()[-200:]}")
    detail = (f"{kills} kills over a {wall:.1f} s run: {resumed} resumed, {restarted} before "
              f"the first checkpoint (ran again), {kills - resumed - restarted} after the end")
    return not failures, "; ".join(failures) or detail


def drill_final_save(work: Path) -> tuple[bool, str]:
    out = work / "final.png"
    args = ["--size", "512", "--iterations", "2", "--checkpoint-every", "60"]
    proc = subprocess.Popen(stylize(out, *args))
    pattern = str(work / f".{out.name}.*.tmp")
    while proc.poll() is None and not glob.glob(pattern):
        time.sleep(0.0005)
    caught = proc.poll() is None
    proc.kill()
    proc.wait()
    if not caught:
        return False, "the run ended before its output's temporary file was seen"
    if out.exists() or not ckpt_of(out).exists():
        return False, f"after the kill: output {out.exists()}, checkpoint {ckpt_of(out).exists()}"
    again = run(stylize(out, *args, "--resume", "--json"))
    if again.returncode != 0:
        return False, again.stderr.strip()[-300:]
    s = last_json(again)
    ok = s["scales"][0]["iterations"] == 0 and s["iterations"] == 2 and whole_image(out)
    return ok, (f"killed during the final save; --resume: {s['scales'][0]['iterations']} new "
                f"iterations, {s['iterations']} in all, output whole: {whole_image(out)}")


# --------------------------------------------------------------------------- batch


def batch_inputs(work: Path, n_contents: int) -> tuple[Path, Path]:
    c, s = work / "contents", work / "styles"
    c.mkdir()
    s.mkdir()
    sources = sorted(_bench.EXAMPLES.glob("*.jpg"))
    for i in range(n_contents):
        img = Image.open(sources[i % len(sources)]).convert("RGB")
        img.thumbnail((96, 96))
        img.rotate(7 * i).save(c / f"c{i}.png")
    for name in ("starry_night.jpg", "the_scream.jpg"):
        img = Image.open(_bench.EXAMPLES / name).convert("RGB")
        img.thumbnail((96, 96))
        img.save(s / name)
    return c, s


def batch_cmd(c: Path, s: Path, out: Path, iterations: int, workers: int = 2) -> list[str]:
    return [*NST, "batch", str(c), "--styles", str(s), "-o", str(out), "--size", "48",
            "--iterations", str(iterations), "--threads", "1", "--workers", str(workers),
            "--checkpoint-every", "0.2", "--quiet"]


def children(pid: int) -> list[int]:
    """The worker processes of ``pid`` (multiprocessing's resource tracker left out)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            cmdline = Path(stat).with_name("cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(Path(stat).parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def records(out: Path) -> list[dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines() if (out / "manifest.jsonl").exists() \
        else []
    return [json.loads(x) for x in lines if x.strip()]


def wait_for(test, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():
            return True
        time.sleep(every)
    return False


def drill_worker(work: Path) -> tuple[bool, str]:
    c, s = batch_inputs(work, 3)
    out = work / "out"
    proc = subprocess.Popen(batch_cmd(c, s, out, 80))
    if not wait_for(lambda: len(glob.glob(str(out / ".*.ckpt.npz"))) >= 1, 120):
        proc.kill()
        return False, "no job got going within 120 s"
    victims = children(proc.pid)
    os.kill(victims[0], signal.SIGKILL)
    rc = proc.wait(timeout=600)
    recs = records(out)
    status = [r["status"] for r in recs]
    done, failed = status.count("done"), status.count("failed")
    ok = len(recs) == 6 and done >= 5 and done + failed == 6
    reasons = "; ".join(r["reason"] for r in recs if r["status"] == "failed")
    return ok, (f"killed 1 of {len(victims)} workers: exit {rc}, {done} done, {failed} failed"
                + (f" ({reasons})" if reasons else " (the dead worker's job retried)"))


def drill_sigterm(work: Path) -> tuple[bool, str]:
    c, s = batch_inputs(work, 2)
    out = work / "out"
    cmd = batch_cmd(c, s, out, 300)
    proc = subprocess.Popen(cmd)
    if not wait_for(lambda: len(glob.glob(str(out / ".*.ckpt.npz"))) >= 2, 120):
        proc.kill()
        return False, "the workers did not get going within 120 s"
    workers = children(proc.pid)
    t = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    took = time.perf_counter() - t
    left = [p for p in workers if alive(p)]
    ckpts = len(glob.glob(str(out / ".*.ckpt.npz")))
    again = run(cmd + ["--json"])
    summary = last_json(again) if again.returncode == 0 else {}
    resumed = sum(1 for j in summary.get("jobs", []) if j.get("resumed"))
    ok = rc == 143 and took <= 10 and not left and again.returncode == 0 \
        and summary["counts"].get("done", 0) == 4
    return ok, (f"exit {rc} in {took:.1f} s, {len(left)} of {len(workers)} workers left, "
                f"{ckpts} checkpoints; re-run: exit {again.returncode}, "
                f"{summary.get('counts')}, {resumed} resumed")


def drill_orphans(work: Path) -> tuple[bool, str]:
    c, s = batch_inputs(work, 2)
    out = work / "out"
    proc = subprocess.Popen(batch_cmd(c, s, out, 2000))
    if not wait_for(lambda: len(children(proc.pid)) >= 2 and
                    glob.glob(str(out / ".*.ckpt.npz")), 120):
        proc.kill()
        return False, "the workers did not get going within 120 s"
    workers = children(proc.pid)
    proc.kill()
    proc.wait()
    t = time.perf_counter()
    gone = wait_for(lambda: not any(alive(p) for p in workers), 30, 0.1)
    took = time.perf_counter() - t
    for p in workers:
        if alive(p):
            os.kill(p, signal.SIGKILL)
    return gone, (f"driver killed: its {len(workers)} workers left within {took:.1f} s"
                  if gone else f"workers still running {took:.0f} s after the driver died")


# --------------------------------------------------------------------------- disk full


def drill_disk_full(work: Path) -> tuple[bool, str]:
    mnt = work / "small"
    mnt.mkdir()
    if run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)]).returncode != 0:
        return True, "skipped: this machine cannot mount a tmpfs here"
    try:
        return _disk_full(work, mnt)
    finally:
        run(["umount", str(mnt)])


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def _disk_full(work: Path, mnt: Path) -> tuple[bool, str]:
    out = mnt / "o.png"
    args = ["--size", "128", "--iterations", "150", "--optimizer", "lbfgs",
            "--checkpoint-every", "0.2"]
    proc = subprocess.Popen(stylize(out, *args), stderr=subprocess.PIPE, text=True)
    if not wait_for(lambda: ckpt_of(out).exists(), 120):
        proc.kill()
        return False, "no checkpoint within 120 s"
    filler = _fill(mnt)
    _, err = proc.communicate(timeout=600)
    lines = [x for x in err.strip().splitlines() if not x.startswith("warning:")]
    named = str(ckpt_of(out)) in err and "MB needed" in err
    first = proc.returncode == 1 and named and not out.exists() and len(lines) == 1
    filler.unlink()
    again = run(stylize(out, *args, "--resume", "--json"))
    second = again.returncode == 0 and whole_image(out) and \
        last_json(again)["iterations"] == 150
    # no checkpoint at all: the image goes to the temporary folder, which is not full
    out2, spare = mnt / "p.png", work / "spare"
    spare.mkdir()
    filler = _fill(mnt)
    third = run(stylize(out2, "--size", "64", "--iterations", "3", "--checkpoint-every", "0"),
                env={**os.environ, "TMPDIR": str(spare)})
    kept = list(spare.glob("nst-onnx-*p.png"))
    filler.unlink()
    ok3 = third.returncode == 1 and len(kept) == 1 and whole_image(kept[0]) and \
        str(kept[0]) in third.stderr
    return first and second and ok3, (
        f"full at the final save: exit {proc.returncode}, names the checkpoint and the space: "
        f"{named} ({lines[-1][:90] if lines else ''}…); after freeing: --resume exit "
        f"{again.returncode}, whole: {second}; without a checkpoint: image in TMPDIR: {ok3}")


def drill_serve(work: Path, jobs: int = 20, iterations: int = 80) -> tuple[bool, str]:
    import sqlite3

    from _serve import Server

    out = work / "out"
    server = Server(out, threads=1).start()
    ids = [server.submit({"size": 64, "iterations": iterations, "style_weight": 100 + i})["id"]
           for i in range(jobs)]
    killed, orphans = [], []  # (job id, iteration) of every job running at a kill
    for done_before in (jobs // 5, jobs // 2):
        def mid_job(done_before: int = done_before) -> bool:
            listed = server.jobs()
            running = [j for j in listed if j["state"] == "running" and j["iteration"] >= 10]
            return sum(j["state"] == "done" for j in listed) >= done_before and bool(running)
        if not wait_for(mid_job, 600, every=0.02):
            server.stop()
            return False, f"no job was running after {done_before} done"
        workers = children(server.process.pid)
        server.kill()
        killed += [(i, it) for i, state, it in server_jobs(out) if state == "running"]
        orphans += workers
        server.start()  # at once: its workers wait for the old ones to checkpoint and go
    finished = wait_for(lambda: all(j["state"] in ("done", "failed", "cancelled")
                                    for j in server.jobs()), 900, every=0.5)
    states = {j["id"]: j["state"] for j in server.jobs()}
    server.stop()
    recs = records(out)
    by_output = {}
    for r in recs:
        by_output.setdefault(r["output"], []).append(r)
    once = len(recs) == jobs and all(len(v) == 1 for v in by_output.values())
    results = {j: server_result(out, j) for j, _ in killed}
    began = [(j, it) for j, it in killed if it >= 1]  # a job killed at 0 had nothing to keep
    resumed = bool(began) and all(
        (results[j] or {}).get("resumed", {}).get("iterations_before", 0) >= 1 for j, _ in began)
    twice = {k: [r["status"] for r in v] for k, v in by_output.items() if len(v) > 1}
    with sqlite3.connect(out / "jobs.sqlite") as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    gone = wait_for(lambda: not any(alive(p) for p in orphans), 90)
    ok = finished and all(states[i] == "done" for i in ids) and once and resumed and \
        integrity == "ok" and gone
    return ok, (f"{sum(v == 'done' for v in states.values())}/{jobs} done; manifest lines "
                f"{len(recs)} (one per job: {once}{'' if once else f', twice: {twice}'}); jobs "
                f"running at the kills, at iterations {[it for _, it in killed]} → resumed from "
                f"{[(results[j] or {}).get('resumed', {}).get('iterations_before') for j, _ in killed]}"
                f"; killed servers' workers left: {gone}; integrity_check {integrity}")


def server_jobs(out: Path) -> list[tuple[str, str, int]]:
    """(id, state, iteration) of every job, from the database as a killed server left it."""
    import sqlite3

    with sqlite3.connect(out / "jobs.sqlite") as db:
        return db.execute("SELECT id, state, iteration FROM jobs").fetchall()


def server_result(out: Path, job_id: str) -> dict | None:
    """The manifest line of a served job (its output name is in the database)."""
    import sqlite3

    with sqlite3.connect(out / "jobs.sqlite") as db:
        row = db.execute("SELECT output FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return next((r for r in records(out) if row and Path(r["output"]).name == row[0]), None)


DRILLS = ("kill9", "final-save", "worker", "sigterm", "orphans", "serve", "disk-full")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="random kill -9 moments")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=DRILLS, default=list(DRILLS))
    a = ap.parse_args()
    print(f"fault drill on {_bench.cpu_model()}, {os.cpu_count()} logical CPUs", flush=True)
    rows = []
    for name in a.only:
        work = Path(tempfile.mkdtemp(prefix=f"nst-drill-{name}-"))
        t = time.perf_counter()
        try:
            ok, detail = (drill_kill9(work, a.kills, a.seed) if name == "kill9" else
                          drill_final_save(work) if name == "final-save" else
                          drill_worker(work) if name == "worker" else
                          drill_sigterm(work) if name == "sigterm" else
                          drill_orphans(work) if name == "orphans" else
                          drill_serve(work) if name == "serve" else drill_disk_full(work))
        except Exception as e:  # noqa: BLE001 - a drill that breaks is a failed drill
            ok, detail = False, f"{e.__class__.__name__}: {e}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append((name, ok, time.perf_counter() - t, detail))
        print(f"{name:11s} {'pass' if ok else 'FAIL'}  {rows[-1][2]:6.1f} s  {detail}", flush=True)
    print(f"\n{sum(ok for _, ok, _, _ in rows)}/{len(rows)} drills passed")
    sys.exit(0 if all(ok for _, ok, _, _ in rows) else 1)


if __name__ == "__main__":
    main()
