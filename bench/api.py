"""Benchmark of the HTTP gateway on loopback, in one run: status polling against a bare FastAPI endpoint, and
how long a submitted job takes to reach `running` with the embedded broker and with Redis.

    .venv/bin/python bench/api.py [--out DIR] [--pollers 50] [--duration 10] [--warmup 2] [--rounds 3]
                                  [--repeat 5] [--redis-url redis://127.0.0.1:6379/0] [--skip-polling] [--skip-submit]
                                  [--status-cache-ttl 0.2]

Status polling: the gateway (as `ltx2trainer serve` runs it) and a bare FastAPI app whose one async route returns a
constant are each served by uvicorn, same settings, in a child process of their own. Ten jobs exist (4 queued, 4
running with log lines, 2 succeeded). Closed-loop pollers (a keep-alive connection each; a minimal raw HTTP/1.1
client in this process, the same for every target, on the same cores: the ratio is fair, absolute numbers lower
than from another machine) poll `GET /v1/trainings/{id}`, the queue facade's `.../requests/{id}/status?logs=1` and
the bare route: warm-up, then a measured window, in interleaved rounds; the best round counts.
Submit-to-running: the gateway and one `ltx2trainer worker` per broker. A job that fails in its first moment (no
media) is submitted and polled every 20 ms until no longer queued: one warm-up job, then `--repeat` jobs, each to an
idle worker (its fresh child process for the next job up, plus 1 s). Reported: POST sent -> first poll answering
`running` (what a client sees, the status cache included), and started_at - created_at.
Prints a plain-text report and writes it as JSON to OUT/bench_api.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import datetime as dt
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import fastapi
import httpx
import psutil
import pydantic
import redis
import uvicorn

try:
    from uvloop import run as run_event_loop  # what the servers run on too (uvicorn picks uvloop when installed)
except ImportError:
    run_event_loop = asyncio.run

REPO = Path(__file__).resolve().parent.parent
POLL_TARGET_RATIO = 0.5  # service throughput / bare throughput
POLL_TARGET_P99_MS = 50.0
SUBMIT_TARGETS_S = {"embedded": 2.0, "redis": 0.5}
SUBMIT_POLL_INTERVAL_S = 0.02
IDLE_SETTLE_S = 1.0  # after a job ended and the worker's next child process is up
JOBS_QUEUED, JOBS_RUNNING, JOBS_SUCCEEDED = 4, 4, 2
LOG_LINES_PER_RUNNING_JOB = 30
SERVER_READY_TIMEOUT_S, WORKER_READY_TIMEOUT_S, STOP_TIMEOUT_S = 60, 90, 30
JOB_RUNNING_TIMEOUT_S, JOB_END_TIMEOUT_S, CHILD_REPLACED_TIMEOUT_S = 30, 120, 15
LOAD_GRACE_S = 30  # a polling run is cut this long after its measured window
FAL_APP = "fal-ai/ltx2-video-trainer"
BARE_PATH = "/constant"
BARE_BODY = {"status": "IN_PROGRESS", "request_id": "constant", "queue_position": None, "logs": None}
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
TARGETS = {"bare": "bare FastAPI, constant dict (async)", "service_v1": "GET /v1/trainings/{id}",
           "service_fal": "GET .../requests/{id}/status?logs=1"}


# --- the servers (child processes) -----------------------------------------------------------------------

def serve_child(kind: str, port: int) -> None:
    """In a child process: serve the gateway (as `ltx2trainer serve` does: JSON logs at INFO) or a bare FastAPI
    app with one async route returning a constant dict (the floor of any FastAPI endpoint); same uvicorn settings."""
    from ltx2trainer.cli_service import configure_json_logging

    configure_json_logging()
    if kind == "service":
        from ltx2trainer.api import create_app
        from ltx2trainer.settings import get_settings

        app = create_app(get_settings())
    else:
        app = fastapi.FastAPI()

        @app.get(BARE_PATH)
        async def constant() -> dict[str, Any]:
            return BARE_BODY

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


@contextlib.contextmanager
def child_process(command: list[str], env: dict[str, str], log_path: Path, ready, timeout_s: float):
    """`command` running (output to `log_path`) once `ready()` is true; SIGTERM (then SIGKILL) on the way out."""
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command[1:])} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def server(kind: str, env: dict[str, str], log_path: Path):
    """(process, port): a child process serving `kind` ("service" or "bare") on a free loopback port."""
    from tests.live_service import free_port

    port = free_port()

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    command = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port)]
    with child_process(command, env, log_path, healthy, SERVER_READY_TIMEOUT_S) as process:
        yield process, port


# --- the load generator ----------------------------------------------------------------------------------

def percentile(sorted_values: list[float], q: int) -> float:
    """Nearest-rank percentile `q` (0-100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, -(-len(sorted_values) * q // 100) - 1))]


async def poll_load(port: int, paths: list[str], headers: dict[str, str], *, pollers: int, warmup_s: float,
                    duration_s: float, server_pid: int) -> dict[str, Any]:
    """`pollers` closed-loop pollers, poller i on paths[i % len(paths)], each with one keep-alive connection and a
    minimal raw HTTP/1.1 client (far cheaper per request than httpx: the generator shares the cores with the
    server). Counts the 2xx answers that arrive in the measured window (latency: request sent -> whole body
    read), every failure in it, and the CPU time that the server and this process used in it."""
    server = psutil.Process(server_pid)
    start = time.perf_counter() + warmup_s
    end = start + duration_s
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()
    cpu_s: dict[str, float] = {}
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{port}", **headers}.items())

    async def poller(i: int) -> None:
        request = f"GET {paths[i % len(paths)]} HTTP/1.1\r\n{head}\r\n".encode()
        reader, writer = None, None
        while (sent := time.perf_counter()) < end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                response_head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(int(CONTENT_LENGTH.search(response_head)[1]))
            except Exception as exc:  # noqa: BLE001 - count it, reconnect, go on
                if writer is not None:
                    writer.close()
                reader, writer = None, None
                if start <= time.perf_counter() < end:
                    errors[type(exc).__name__] += 1
                continue
            if start <= (done := time.perf_counter()) < end:
                if (code := int(response_head[9:12])) in (200, 202):
                    latencies.append(done - sent)
                else:
                    errors[f"HTTP {code}"] += 1
        if writer is not None:
            writer.close()

    async def cpu_probe() -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        server0, generator0 = sum(server.cpu_times()[:2]), time.process_time()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        cpu_s["server"], cpu_s["generator"] = sum(server.cpu_times()[:2]) - server0, time.process_time() - generator0

    tasks = [asyncio.create_task(poller(i)) for i in range(pollers)] + [asyncio.create_task(cpu_probe())]
    _done, pending = await asyncio.wait(tasks, timeout=warmup_s + duration_s + LOAD_GRACE_S)
    for task in pending:
        task.cancel()
        errors["timeout"] += 1
    latencies.sort()
    ok, nan = len(latencies), float("nan")
    return {"requests": ok, "requests_per_s": ok / duration_s, "errors": sum(errors.values()),
            "error_kinds": dict(errors), **{f"p{q}_ms": percentile(latencies, q) * 1000 for q in (50, 95, 99)},
            "max_ms": latencies[-1] * 1000 if latencies else nan,
            "server_cpu_fraction": cpu_s.get("server", nan) / duration_s,
            "server_cpu_us_per_request": cpu_s.get("server", nan) / ok * 1e6 if ok else nan,
            "generator_cpu_fraction": cpu_s.get("generator", nan) / duration_s}


# --- status polling --------------------------------------------------------------------------------------

def services_for(env: dict[str, str]):
    """The package's Services, with the settings that a process started with `env` reads."""
    from ltx2trainer.settings import Settings
    from ltx2trainer.wiring import Services

    return Services(Settings(**{key.removeprefix("LTX2T_").lower(): value for key, value in env.items()
                                if key.startswith("LTX2T_")}))


def job_body() -> dict[str, Any]:
    """FAST_JOB on a zip that holds no media: valid to submit, fails in the first moment of preparation."""
    from tests.live_service import FAST_JOB

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", b"no videos here")
    data_url = "data:application/zip;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {**FAST_JOB, "training_data_url": data_url}


def populate(port: int, env: dict[str, str]) -> tuple[str, list[dict[str, str]]]:
    """An API key and ten jobs submitted over HTTP, some then driven through the lifecycle as a worker would
    (running with progress and log lines; succeeded with output files); every poll target is checked once.
    Returns (key, [{id, status}])."""
    from ltx2trainer.jobs.keys import create_key

    services = services_for(env)
    lifecycle, settings = services.lifecycle, services.settings
    key = create_key(services.db, "bench").token
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Key {key}"},
                      timeout=30) as client:
        jobs = []
        for i in range(JOBS_QUEUED + JOBS_RUNNING + JOBS_SUCCEEDED):
            response = client.post("/v1/trainings", json={**job_body(), "metadata": {"bench": i}})
            jobs.append({"id": response.raise_for_status().json()["id"], "status": "queued"})
        output = {"key": "bench/lora.safetensors", "content_type": "application/octet-stream",
                  "file_name": "lora.safetensors", "file_size": 1234567}
        for job in jobs[JOBS_QUEUED:JOBS_QUEUED + JOBS_RUNNING]:
            lifecycle.start(job["id"], "bench-worker", settings.job_lease_s, settings.job_max_attempts)
            lifecycle.set_phase(job["id"], "training")
            for n in range(LOG_LINES_PER_RUNNING_JOB):
                lifecycle.log(job["id"], f"step {n}: loss 0.{n:03d}, a line of training log of typical length")
            lifecycle.report_progress(job["id"], {"step": 40, "total_steps": 100, "loss": 0.1234, "eta_s": 30.0,
                                                  "steps_per_s": 2.0})
            job["status"] = "running"
        for job in jobs[JOBS_QUEUED + JOBS_RUNNING:]:
            lifecycle.start(job["id"], "bench-worker", settings.job_lease_s, settings.job_max_attempts)
            lifecycle.succeed(job["id"], {"lora_file": output, "config_file": {
                **output, "key": "bench/config.json", "file_name": "config.json"}})
            job["status"] = "succeeded"
        for job in jobs:
            got = client.get(f"/v1/trainings/{job['id']}")
            assert got.status_code == 200 and got.json()["status"] == job["status"], got.text[:300]
            fal = client.get(f"/{FAL_APP}/requests/{job['id']}/status", params={"logs": "1"})
            assert fal.status_code in (200, 202), fal.text[:300]
    return key, jobs


def measure_polling(args, work: Path) -> dict[str, Any]:
    """Both servers up at once; each target measured `args.rounds` times, interleaved; the best round counts."""
    from tests.live_service import service_env

    env = service_env(work / "poll_data", LTX2T_STATUS_CACHE_TTL_S=str(args.status_cache_ttl))
    with server("service", env, work / "poll_service.log") as (service, service_port), \
            server("bare", env, work / "poll_bare.log") as (bare, bare_port):
        print("status polling: populating the service...", flush=True)
        key, jobs = populate(service_port, env)
        targets = {"service_v1": (service, service_port, [f"/v1/trainings/{job['id']}" for job in jobs]),
                   "service_fal": (service, service_port,
                                   [f"/{FAL_APP}/requests/{job['id']}/status?logs=1" for job in jobs]),
                   "bare": (bare, bare_port, [BARE_PATH])}
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for r in range(args.rounds):
            for name, (process, port, paths) in targets.items():
                run = run_event_loop(poll_load(port, paths, {"Authorization": f"Key {key}"}, pollers=args.pollers,
                                               warmup_s=args.warmup, duration_s=args.duration, server_pid=process.pid))
                rounds[name].append(run)
                print(f"  round {r + 1}/{args.rounds} {name:11s} {run['requests_per_s']:6.0f} req/s  p50 "
                      f"{run['p50_ms']:5.1f}  p95 {run['p95_ms']:5.1f}  p99 {run['p99_ms']:6.1f} ms  errors "
                      f"{run['errors']}  server CPU {run['server_cpu_fraction']:.0%}, generator CPU "
                      f"{run['generator_cpu_fraction']:.0%}", flush=True)
    best = {name: max(runs, key=lambda run: run["requests_per_s"]) for name, runs in rounds.items()}
    verdicts = {name: {"ratio_to_bare": best[name]["requests_per_s"] / best["bare"]["requests_per_s"],
                       "p99_met": best[name]["p99_ms"] < POLL_TARGET_P99_MS} for name in ("service_v1", "service_fal")}
    for verdict in verdicts.values():
        verdict["ratio_met"] = verdict["ratio_to_bare"] >= POLL_TARGET_RATIO
    return {"jobs": jobs, "rounds": rounds, "best": best, "verdicts": verdicts}


# --- submit-to-running -----------------------------------------------------------------------------------

def pool_children(worker: subprocess.Popen) -> set[int]:
    """The pids of the worker's pool processes (concurrency 1: one child, replaced after every job)."""
    return {child.pid for child in psutil.Process(worker.pid).children()}


def submit_once(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Submit, poll every SUBMIT_POLL_INTERVAL_S until the job is no longer queued, then until it ended."""
    sent = time.perf_counter()
    job = client.post("/v1/trainings", json=body).raise_for_status().json()
    posted, seen = time.perf_counter(), None
    while job["status"] in ("queued", "running") and time.perf_counter() < sent + JOB_END_TIMEOUT_S:
        time.sleep(SUBMIT_POLL_INTERVAL_S)
        job = client.get(f"/v1/trainings/{job['id']}").raise_for_status().json()
        if seen is None and job["status"] != "queued":
            seen = time.perf_counter()
        if seen is None and time.perf_counter() > sent + JOB_RUNNING_TIMEOUT_S:
            raise RuntimeError(f"job {job['id']} still queued after {JOB_RUNNING_TIMEOUT_S} s")
    created, started = dt.datetime.fromisoformat(job["created_at"]), dt.datetime.fromisoformat(job["started_at"])
    return {"job_id": job["id"], "post_s": posted - sent, "client_to_running_s": seen - sent,
            "server_to_running_s": (started - created).total_seconds(), "final_status": job["status"]}


def measure_submit(args, work: Path, broker: str, broker_url: str | None) -> dict[str, Any]:
    """One warm-up job, then `args.repeat` jobs, each submitted to an idle worker (its next child process up,
    plus IDLE_SETTLE_S); the target holds when the slowest of those is seen running in time."""
    from ltx2trainer.jobs.keys import create_key
    from tests.live_service import service_env

    env = service_env(work / f"submit_{broker}_data", **({"LTX2T_BROKER_URL": broker_url} if broker_url else {}))
    worker_log = work / f"submit_{broker}_worker.log"
    worker_command = [sys.executable, "-m", "ltx2trainer.cli", "worker"]
    runs = []
    with server("service", env, work / f"submit_{broker}_gateway.log") as (_server, port), \
            child_process(worker_command, env, worker_log, lambda: "ready." in worker_log.read_text(errors="replace"),
                          WORKER_READY_TIMEOUT_S) as worker, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        client.headers["Authorization"] = f"Key {create_key(services_for(env).db, 'bench').token}"
        time.sleep(IDLE_SETTLE_S)
        for i in range(1 + args.repeat):
            children = pool_children(worker)
            run = {"warm_up": i == 0, **submit_once(client, job_body())}
            runs.append(run)
            print(f"  {broker} {'warm-up' if i == 0 else f'job {i}'}: running after {run['client_to_running_s']:.3f} s "
                  f"(server-side {run['server_to_running_s']:.3f} s, POST {run['post_s'] * 1000:.0f} ms), then "
                  f"{run['final_status']}", flush=True)
            deadline = time.monotonic() + CHILD_REPLACED_TIMEOUT_S
            while not pool_children(worker) - children and time.monotonic() < deadline:
                time.sleep(SUBMIT_POLL_INTERVAL_S)
            time.sleep(IDLE_SETTLE_S)
    summary = {key: spread([run[key] for run in runs if not run["warm_up"]])
               for key in ("client_to_running_s", "server_to_running_s", "post_s")}
    return {"broker_url": broker_url or "filesystem (embedded)", "runs": runs, "summary": summary,
            "target_s": SUBMIT_TARGETS_S[broker],
            "met": summary["client_to_running_s"]["max"] < SUBMIT_TARGETS_S[broker]}


def spread(values: list[float]) -> dict[str, float]:
    """min, median, max and count of `values`."""
    if not values:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan"), "n": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def redis_keys(url: str, *, flush: bool = False) -> int | str:
    """How many keys the Redis database at `url` holds (after emptying it, with `flush`), or why it is unreachable."""
    try:
        with redis.Redis.from_url(url) as client:
            if flush:
                client.flushdb()
            return client.dbsize()
    except redis.RedisError as exc:
        return f"Redis at {url} unreachable: {exc}"


# --- report ----------------------------------------------------------------------------------------------

def summary_lines(results: dict[str, Any], args) -> list[str]:
    """The plain-text report."""
    env, before, after = results["environment"], results["load_before"], results["load_after"]
    lines = [f"environment: {env['cpu_count']} cores, Python {env['python']}, uvicorn {env['uvicorn']} "
             f"({env['uvicorn_speedups']}), FastAPI {env['fastapi']}, pydantic {env['pydantic']}",
             "load average (1/5/15 min): " + " ".join(f"{x:.2f}" for x in before) + " before, "
             + " ".join(f"{x:.2f}" for x in after) + " after"]
    if polling := results.get("polling"):
        best = polling["best"]
        lines += ["", f"STATUS POLLING: {args.pollers} pollers, closed loop, {args.duration:g} s measured after "
                      f"{args.warmup:g} s warm-up, best of {args.rounds} interleaved rounds; jobs: "
                      f"{JOBS_QUEUED} queued, {JOBS_RUNNING} running, {JOBS_SUCCEEDED} succeeded",
                  "  servers: uvicorn, 1 process each, a child process of their own; load generator: raw keep-alive "
                  "HTTP/1.1 in the bench process, on the same cores",
                  f"  the gateway's status-poll cache: {args.status_cache_ttl:g} s"
                  + (" (off: every poll reads the database)" if args.status_cache_ttl == 0 else ""),
                  f"  {'target':38s} {'req/s':>7s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} {'errors':>6s} "
                  f"{'srv CPU':>7s} {'CPU us/req':>10s}"]
        for name, label in TARGETS.items():
            run = best[name]
            lines.append(f"  {label:38s} {run['requests_per_s']:7.0f} {run['p50_ms']:7.1f} {run['p95_ms']:7.1f} "
                         f"{run['p99_ms']:7.1f} {run['errors']:6d} {run['server_cpu_fraction']:7.0%} "
                         f"{run['server_cpu_us_per_request']:10.0f}")
        for name, verdict in polling["verdicts"].items():
            lines.append(f"  {TARGETS[name]}: ratio to bare {verdict['ratio_to_bare']:.2f} (target >= "
                         f"{POLL_TARGET_RATIO}) {'MET' if verdict['ratio_met'] else 'MISSED'}; p99 "
                         f"{best[name]['p99_ms']:.1f} ms (target < {POLL_TARGET_P99_MS:g} ms) "
                         f"{'MET' if verdict['p99_met'] else 'MISSED'}")
        lines.append(f"  (closed loop: mean latency = {args.pollers} / throughput, so p99 < {POLL_TARGET_P99_MS:g} ms "
                     f"needs well over {args.pollers / POLL_TARGET_P99_MS * 1000:.0f} req/s)")
    for broker, submit in results.get("submit", {}).items():
        if "skipped" in submit:
            lines += ["", f"SUBMIT-TO-RUNNING, {broker} broker: skipped: {submit['skipped']}"]
            continue
        summary = submit["summary"]
        lines += ["", f"SUBMIT-TO-RUNNING, {broker} broker ({submit['broker_url']}): "
                      f"{summary['client_to_running_s']['n']} jobs, each to an idle worker, status polled every "
                      f"{SUBMIT_POLL_INTERVAL_S * 1000:g} ms"]
        for key, label in (("client_to_running_s", "POST sent -> a poll answers running"),
                           ("server_to_running_s", "server-side: started_at - created_at"),
                           ("post_s", "the POST itself")):
            v = summary[key]
            lines.append(f"  {label:38s} min {v['min']:.3f} s  median {v['median']:.3f} s  max {v['max']:.3f} s")
        lines += [f"  first job after start-up (not counted): {submit['runs'][0]['client_to_running_s']:.3f} s",
                  f"  target < {submit['target_s']:g} s (max of the measured jobs): "
                  f"{'MET' if submit['met'] else 'MISSED'}"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench-output", help="output folder (%(default)s)")
    parser.add_argument("--pollers", type=int, default=50, help="concurrent pollers (%(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per polling run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each polling run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of polling runs (best counts)")
    parser.add_argument("--repeat", type=int, default=5, help="measured submissions per broker")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="an empty Redis database (flushed afterwards)")
    parser.add_argument("--skip-polling", action="store_true")
    parser.add_argument("--skip-submit", action="store_true")
    parser.add_argument("--status-cache-ttl", type=float, default=0.2,
                        help="the gateway's LTX2T_STATUS_CACHE_TTL_S for the polling runs (0: no cache)")
    parser.add_argument("--serve", choices=("service", "bare"), help=argparse.SUPPRESS)  # internal: a server child
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(args.serve, args.port)
        return
    sys.path.insert(0, str(REPO))  # tests.live_service

    out = args.out.resolve()
    work = out / "api_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    environment = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                   "fastapi": fastapi.__version__, "pydantic": pydantic.__version__, "uvicorn": uvicorn.__version__,
                   "uvicorn_speedups": ", ".join(m for m in ("uvloop", "httptools") if importlib.util.find_spec(m))}
    results: dict[str, Any] = {"environment": environment, "load_before": os.getloadavg(),
                               "args": {k: str(v) for k, v in vars(args).items() if v is not None}}
    print(f"load average before (1/5/15 min): {results['load_before']}", flush=True)
    if not args.skip_polling:
        results["polling"] = measure_polling(args, work)
    if not args.skip_submit:
        print("submit-to-running: embedded broker...", flush=True)
        results["submit"] = {"embedded": measure_submit(args, work, "embedded", None)}
        keys = redis_keys(args.redis_url)
        if keys != 0:  # never flush a database that holds someone's data
            results["submit"]["redis"] = {"skipped": keys if isinstance(keys, str) else
                                          f"{args.redis_url} holds {keys} keys; pass --redis-url with an empty one"}
        else:
            print(f"submit-to-running: Redis ({args.redis_url})...", flush=True)
            try:
                results["submit"]["redis"] = measure_submit(args, work, "redis", args.redis_url)
            finally:
                redis_keys(args.redis_url, flush=True)
    results["load_after"] = os.getloadavg()
    results["summary"] = summary_lines(results, args)
    (out / "bench_api.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    print("\n" + "\n".join(results["summary"]) + f"\n\nfull results: {out / 'bench_api.json'}")


if __name__ == "__main__":
    main()
