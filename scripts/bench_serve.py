"""Load on ``nst serve`` (issue 21's target), loopback only, bounded in count and time.

While one job computes on every core, ``--listeners`` Server-Sent-Event streams follow it and
``GET /api/jobs`` is asked ``--rate`` times a second for ``--duration`` seconds. Reported:
the requests' latency (median, p99, max), errors of either kind, and the job's own run time
against the same job from ``nst stylize`` (alone, in its own process, before and after).

    python scripts/bench_serve.py                     # 512 px, 50 listeners, 20/s for 60 s
    python scripts/bench_serve.py --size 128 --iterations 40 --duration 10   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import _bench  # paths, BLAS threads, the CPU's name
import httpx
from _serve import PAIR, Server


async def listen(client: httpx.AsyncClient, url: str, stats: dict) -> None:
    """One SSE stream to its end; every event line must parse."""
    try:
        async with client.stream("GET", url) as r:
            if r.status_code != 200:
                stats["errors"].append(f"events {r.status_code}")
                return
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    json.loads(line[6:])
                    stats["events"] += 1
    except Exception as e:  # noqa: BLE001 - counted, not raised
        stats["errors"].append(f"events {e.__class__.__name__}: {e}")


async def poll(client: httpx.AsyncClient, url: str, rate: float, duration: float,
               stats: dict) -> None:
    """``rate`` requests a second, each on its own schedule (a slow answer does not delay
    the next request: this is an open loop, as independent clients are)."""
    async def one() -> None:
        t = time.perf_counter()
        try:
            r = await client.get(url)
            ok = r.status_code == 200 and "jobs" in r.json()
        except Exception as e:  # noqa: BLE001
            stats["errors"].append(f"GET {e.__class__.__name__}: {e}")
            return
        stats["latency"].append(time.perf_counter() - t)
        if not ok:
            stats["errors"].append(f"GET {r.status_code}")

    tasks, start = [], time.perf_counter()
    for i in range(int(rate * duration)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)


async def load(server: Server, job_id: str, a) -> dict:
    stats = {"latency": [], "errors": [], "events": 0}
    limits = httpx.Limits(max_connections=a.listeners + 50)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
        while (await client.get(f"/api/jobs/{job_id}")).json()["iteration"] < 1:
            await asyncio.sleep(0.2)  # the load starts once the job computes
        t0 = time.perf_counter()
        streams = [asyncio.create_task(listen(client, f"/api/jobs/{job_id}/events", stats))
                   for _ in range(a.listeners)]
        await poll(client, "/api/jobs", a.rate, a.duration, stats)
        stats["load_seconds"] = time.perf_counter() - t0
        stats["job_state_at_end"] = (await client.get(f"/api/jobs/{job_id}")).json()["state"]
        await asyncio.gather(*streams)  # they end with the job
    return stats


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=100,
                    help="the job's; it must outlast --duration (the script says if not)")
    ap.add_argument("--listeners", type=int, default=50)
    ap.add_argument("--rate", type=float, default=20.0, help="GET /api/jobs a second")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    if a.listeners > 200 or a.rate * a.duration > 20000 or a.duration > 600:
        raise SystemExit("bounded: at most 200 listeners, 20000 requests, 600 s")
    settings = {"size": a.size, "iterations": a.iterations}
    work = Path(tempfile.mkdtemp(prefix="nst-bench-serve-"))

    def cli(name: str) -> float:
        summary, _, _ = _bench.run_nst(
            ["stylize", str(_bench.EXAMPLES / PAIR["content_example"]),
             str(_bench.EXAMPLES / PAIR["style_example"]), "-o", str(work / name),
             "--size", str(a.size), "--iterations", str(a.iterations), "--quiet"])
        return summary["seconds"]

    before = cli("before.png")  # the same job alone, before and after (the machine drifts)
    server = Server(work / "serve").start()
    try:
        job = server.submit(settings)
        stats = asyncio.run(load(server, job["id"], a))
        while (done := server.job(job["id"]))["state"] not in ("done", "failed", "cancelled"):
            time.sleep(0.5)
    finally:
        server.stop()
    after = cli("after.png")
    lat = [x * 1000 for x in stats["latency"]]
    served = (done.get("result") or {}).get("seconds")
    out = {"cpu": _bench.cpu_model(), "cpus": os.cpu_count(), "size": a.size,
           "iterations": a.iterations, "listeners": a.listeners, "rate": a.rate,
           "duration": a.duration, "requests": len(lat), "events": stats["events"],
           "errors": len(stats["errors"]), "error_examples": stats["errors"][:5],
           "latency_ms": {"median": quantile(lat, 0.5), "p99": quantile(lat, 0.99),
                          "max": max(lat, default=float("nan"))},
           "job_state": done["state"], "job_seconds_served": served,
           "job_seconds_cli_before_after": [before, after],
           "served_over_cli": 2 * served / (before + after) if served else None,
           "load_outlasted_by_job": stats["job_state_at_end"] == "running"}
    print(json.dumps(out, indent=1))
    if not out["load_outlasted_by_job"]:
        print("note: the job ended before the load did: give more --iterations")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
