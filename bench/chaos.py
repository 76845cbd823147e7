"""Fault and load benchmark of the whole service on loopback, in bounded time: does a bad day lose a job, bill
a step twice, answer a 5xx or drop a webhook?

    .venv/bin/python bench/chaos.py [--out DIR] [--database-url URL] [--kills 10] [--kill-job-steps 400]
                                    [--submits 500] [--clients 50] [--keys 5] [--receiver-down-s 180]
                                    [--scenarios task-kill,worker-kill,redis-restart,load]

One `ltx2trainer serve --with-worker` (the gateway, its supervisor and its worker, as a subprocess) on a private
Redis without persistence and a fresh PostgreSQL database (SQLite when no local server answers), the tiny model.
Every training job sends native webhooks to a receiver that is DOWN for the first `--receiver-down-s` seconds
of the run, then verifies every delivery's signature with `standardwebhooks`. A poller reads every live job's
status (native and queue-facade) from its owner's key twice a second throughout. The scenarios, in order:

  task-kill      one job; its task process is SIGKILLed `--kills` times, each after it made progress again
  worker-kill    one job; the worker's main process is SIGKILLed (the supervisor starts a new worker)
  redis-restart  four jobs (one running, three queued); Redis is killed, one more job is submitted while it is
                 down, and Redis is started again empty
  load           `--submits` submits by `--clients` concurrent clients over `--keys` keys; each polls its job
                 (both APIs) and cancels it, except every 25th, which runs (and fails at once: not a zip)

Per scenario: jobs submitted / finished / lost (not finished by the deadline) / succeeded, steps trained (all
of a succeeded job's, those completed of the others) against the usage ledger (rows, steps in it twice, steps
trained and missing from it), 5xx answers, webhooks verified / expected (messages in the outbox), p99
latencies. Targets: 0 lost, 0 billed twice, 0 unbilled, 0 5xx, every webhook delivered and verified. Prints a
table; writes OUT/bench_chaos.json.
Job attempts are raised to `--kills + 2` (the default 3 would, by design, fail a job killed a third time).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import secrets
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos_rig import PrivateRedis, Recorder, Service, WebhookReceiver, fresh_database, wait_until  # noqa: E402
from ltx2trainer.billing.models import UsageRecordRow  # noqa: E402
from ltx2trainer.notify.models import WebhookMessageRow, WebhookStatus  # noqa: E402
from ltx2trainer.sample_data import ClipSpec, make_clip  # noqa: E402
from ltx2trainer.wiring import Services  # noqa: E402

TERMINAL = {"succeeded", "failed", "cancelled"}
FAL_APP = "fal-ai/ltx2-video-trainer"
JOB = {"number_of_frames": 9, "resolution": "low", "aspect_ratio": "16:9", "rank": 8, "learning_rate": 0.001}
CHECKPOINT_EVERY = 25
LEASE_S = 20  # short, so that a job whose worker died is taken over within the run
KILL_GAP_STEPS = 15  # the job must pass the step it was last killed at by this much before the next kill
JOB_END_TIMEOUT_S = 420
LOAD_END_TIMEOUT_S, LOAD_STALL_S = 2400, 180  # the worker drains the load's queue at one process per message
POLL_EVERY_S = 0.5
KEEP_EVERY = 25  # of the load's jobs, every 25th runs instead of being cancelled


@dataclass
class Row:
    scenario: str
    submitted: int = 0
    finished: int = 0
    lost: int = 0
    succeeded: int = 0
    steps_trained: int = 0  # number_of_steps of each succeeded job, steps_completed of the others
    steps_billed: int = 0  # rows in the usage ledger
    double_billed: int = 0  # a (job, step) in the ledger more than once
    unbilled: int = 0  # steps trained and not in the ledger
    http_5xx: int = 0
    webhooks_expected: int = 0
    webhooks_verified: int = 0
    p99_submit_ms: float | None = None
    p99_poll_ms: float | None = None
    wall_s: float = 0.0
    completed_run: bool = True  # False: the scenario stopped at a deadline or a refused submit
    notes: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)


class Chaos:
    def __init__(self, args: argparse.Namespace, service: Service, redis: PrivateRedis,
                 receiver: WebhookReceiver, data_url: str) -> None:
        self.args, self.service, self.redis, self.receiver = args, service, redis, receiver
        self.data_url = data_url
        self.recorder = Recorder()
        self.keys = [service.new_key(f"tenant{i}") for i in range(args.keys)]
        self.clients = [httpx.Client(base_url=service.url, timeout=30, headers={"Authorization": f"Key {key}"})
                        for key in self.keys]
        self.live: dict[str, int] = {}  # job id -> index of its owner's key, polled until it finishes
        self.status: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.scenario = "setup"
        self.poller = threading.Thread(target=self._poll_forever, daemon=True)
        self.poller.start()

    # --- jobs ------------------------------------------------------------------------------------------

    def submit(self, steps: int, *, owner: int = 0, fal: bool = False, data_url: str | None = None,
               webhook: bool = True) -> str | None:
        body = {**JOB, "number_of_steps": steps, "training_data_url": data_url or self.data_url}
        if webhook:
            body["webhook_url"] = self.receiver.url()
        client = self.clients[owner]
        if fal:
            params = {"fal_webhook": self.receiver.url("/fal")} if webhook else {}
            response = self.recorder.request(client, f"{self.scenario}:submit", "POST", f"/{FAL_APP}",
                                             json=body, params=params)
            job_id = response.json().get("request_id") if response is not None and response.is_success else None
        else:
            response = self.recorder.request(client, f"{self.scenario}:submit", "POST", "/v1/trainings", json=body)
            job_id = response.json().get("id") if response is not None and response.is_success else None
        if job_id is None:
            print(f"  submit refused: {None if response is None else (response.status_code, response.text[:300])}")
            return None
        with self.lock:
            self.live[job_id] = owner
        return job_id

    def job(self, job_id: str) -> dict:
        with self.lock:
            return self.status.get(job_id, {})

    def step(self, job_id: str) -> int:
        return (self.job(job_id).get("progress") or {}).get("step") or 0

    def _poll_forever(self) -> None:
        fal_turn = False
        while not self.stop.wait(POLL_EVERY_S):
            with self.lock:
                jobs = [(job_id, owner) for job_id, owner in self.live.items()]
            fal_turn = not fal_turn
            for job_id, owner in jobs:
                client = self.clients[owner]
                kind = f"{self.scenario}:poll"
                if fal_turn:
                    self.recorder.request(client, kind, "GET", f"/{FAL_APP}/requests/{job_id}/status",
                                          params={"logs": "1"})
                    continue
                response = self.recorder.request(client, kind, "GET", f"/v1/trainings/{job_id}")
                if response is not None and response.status_code == 200:
                    body = response.json()
                    with self.lock:
                        self.status[job_id] = body
                        if body["status"] in TERMINAL:
                            self.live.pop(job_id, None)

    def wait_finished(self, job_ids: list[str], timeout_s: float = JOB_END_TIMEOUT_S, *,
                      stall_s: float | None = None) -> None:
        """Until every job finished, at most `timeout_s`; with `stall_s`, also give up once no job finished for
        that long (a long queue drains at the machine's pace: what is left after a stall is lost)."""
        deadline = time.monotonic() + timeout_s
        finished, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_finished = sum(self.job(j).get("status") in TERMINAL for j in job_ids)
            if now_finished == len(job_ids):
                return
            if now_finished != finished:
                finished, last_change = now_finished, time.monotonic()
            elif stall_s is not None and time.monotonic() - last_change > stall_s:
                print(f"  no job finished for {stall_s:.0f} s; {len(job_ids) - finished} left")
                return
            time.sleep(0.5)
        print(f"  timed out after {timeout_s:.0f} s waiting for {len(job_ids)} job(s) to finish")

    # --- scenarios -------------------------------------------------------------------------------------

    def task_kill(self, row: Row) -> None:
        job_id = self.submit(self.args.kill_job_steps)
        row.job_ids.append(job_id)
        last_step = 0
        for kill in range(self.args.kills):
            target = last_step + KILL_GAP_STEPS if kill else CHECKPOINT_EVERY + 5
            wait_until(lambda target=target: self.step(job_id) >= target and self.service.task_process(), 240,
                       f"step {target} before kill {kill + 1}")
            victim = self.service.task_process()
            last_step = self.step(job_id)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            print(f"  kill {kill + 1}: task process {victim.pid} at step ~{last_step}")
        self.wait_finished([job_id])
        row.notes.append(f"{self.args.kills} task-process kills, the last at step ~{last_step}")

    def worker_kill(self, row: Row) -> None:
        job_id = self.submit(150)
        row.job_ids.append(job_id)
        wait_until(lambda: self.step(job_id) >= 30 and self.service.task_process(), 240, "step 30")
        main, child = self.service.worker_main(), self.service.task_process()
        main.send_signal(signal.SIGKILL)
        print(f"  killed worker main {main.pid} at step ~{self.step(job_id)} (its task process: {child.pid})")
        orphan_gone = wait_until(lambda: not child.is_running() or child.status() == "zombie", 60,
                                 "the orphaned task process to exit", 0.5)
        new_main = wait_until(lambda: (m := self.service.worker_main()) and m.pid != main.pid and m, 120,
                              "the supervisor to start a new worker")
        row.notes.append(f"orphaned task process exited: {bool(orphan_gone)}; new worker pid {new_main.pid}")
        self.wait_finished([job_id])

    def redis_restart(self, row: Row) -> None:
        jobs = [self.submit(100, fal=i % 2 == 1) for i in range(4)]
        row.job_ids.extend(jobs)
        wait_until(lambda: self.step(jobs[0]) >= 10, 240, "the first job's step 10")
        queued = [j for j in jobs if self.job(j).get("status") == "queued"]
        self.redis.kill()
        print(f"  Redis killed: 1 running, {len(queued)} queued")
        time.sleep(2)
        during = self.submit(100)  # submitted while the broker is down
        row.job_ids.append(during)
        time.sleep(3)
        self.redis.start()
        print("  Redis started again, empty")
        row.notes.append(f"{len(queued)} queued jobs lost their messages; 1 submitted while Redis was down")
        self.wait_finished(row.job_ids)

    def load(self, row: Row) -> None:
        broken = "data:application/zip;base64," + base64.b64encode(b"this is not a zip").decode()
        kind = f"{self.scenario}:poll"

        def client_job(index: int) -> str | None:
            owner = index % len(self.keys)
            keep = index % KEEP_EVERY == 0
            job_id = self.submit(100, owner=owner, data_url=broken, webhook=keep)
            if job_id is None or keep:
                return job_id
            client = self.clients[owner]
            self.recorder.request(client, kind, "GET", f"/v1/trainings/{job_id}")
            self.recorder.request(client, kind, "GET", f"/{FAL_APP}/requests/{job_id}/status")
            self.recorder.request(client, f"{self.scenario}:cancel", "POST", f"/v1/trainings/{job_id}/cancel")
            return job_id

        with ThreadPoolExecutor(self.args.clients) as pool:
            row.job_ids.extend(pool.map(client_job, range(self.args.submits)))
        kept = row.job_ids[::KEEP_EVERY]
        row.notes.append(f"{len(row.job_ids) - len(kept)} cancelled by their clients, {len(kept)} run")
        self.wait_finished([j for j in row.job_ids if j], timeout_s=LOAD_END_TIMEOUT_S, stall_s=LOAD_STALL_S)

    # --- accounting ------------------------------------------------------------------------------------

    def run(self, name: str, scenario) -> Row:
        print(f"[{name}]")
        self.scenario = name
        row, errors_before, started = Row(name), self.recorder.count_5xx(), time.monotonic()
        try:
            scenario(row)
        except TimeoutError as exc:
            row.notes.append(f"stopped: {exc}")
            row.completed_run = False
            print(f"  {exc}")
        row.wall_s = round(time.monotonic() - started, 1)
        if None in row.job_ids:
            row.completed_run = False
            row.notes.append(f"{row.job_ids.count(None)} submit(s) refused")
        row.job_ids = [j for j in row.job_ids if j]
        row.submitted = len(row.job_ids)
        row.http_5xx = self.recorder.count_5xx() - errors_before
        row.p99_submit_ms = self.recorder.p99_ms(f"{name}:submit")
        row.p99_poll_ms = self.recorder.p99_ms(f"{name}:poll")
        return row

    def settle(self, rows: list[Row]) -> None:
        """Fill in what only the end of the run can say: finished, billed and webhook counts."""
        services = Services(self.service.settings)
        delivered = self.receiver.received()
        for row in rows:
            for job_id in row.job_ids:
                job = self.job(job_id)
                row.finished += job.get("status") in TERMINAL
                row.succeeded += job.get("status") == "succeeded"
                done = (job.get("usage") or {}).get("steps_completed") or 0
                row.steps_trained += job["input"]["number_of_steps"] if job.get("status") == "succeeded" else done
            row.lost = row.submitted - row.finished
            with services.db.session() as session:
                ledger = session.execute(select(UsageRecordRow.job_id, UsageRecordRow.step).where(
                    UsageRecordRow.job_id.in_(row.job_ids))).all()
                messages = session.scalars(select(WebhookMessageRow.id).where(
                    WebhookMessageRow.job_id.in_(row.job_ids))).all()
            row.steps_billed = len(ledger)
            row.double_billed = len(ledger) - len(set(ledger))
            row.unbilled = row.steps_trained - len(set(ledger))
            row.webhooks_expected = len(messages)
            row.webhooks_verified = sum(message in delivered for message in messages)
        services.db.engine.dispose()

    def wait_for_webhooks(self, rows: list[Row], limit_s: float) -> None:
        """Until every outbox message of the run was received and verified (retries follow the real schedule:
        a message that failed twice while the receiver was down is retried 5 minutes later)."""
        services = Services(self.service.settings)
        ids = [j for row in rows for j in row.job_ids]

        def all_in() -> bool:
            with services.db.session() as session:
                messages = session.scalars(select(WebhookMessageRow.id).where(
                    WebhookMessageRow.job_id.in_(ids), WebhookMessageRow.status != WebhookStatus.FAILED)).all()
            received = self.receiver.received()
            return all(message in received for message in messages)

        try:
            wait_until(all_in, limit_s, "every webhook to be delivered", 2.0)
        except TimeoutError as exc:
            print(f"  {exc}")
        services.db.engine.dispose()


def tiny_dataset(folder: Path) -> str:
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, (source, tone) in enumerate((("smptebars", 440.0), ("testsrc2", 550.0))):
            clip = make_clip(folder / f"clip{i}.mp4", ClipSpec(f"clip{i}", source, 0.6, 24, 160, 120, tone, ""))
            zf.write(clip, clip.name)
            zf.writestr(f"clip{i}.txt", f"test clip number {i}")
    return "data:application/zip;base64," + base64.b64encode(archive.read_bytes()).decode()


def print_table(rows: list[Row], down_s: float) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    header = (f"{'scenario':<14}{'jobs':>6}{'done':>6}{'lost':>6}{'ok':>5}{'trained':>8}{'billed':>8}{'2x':>4}"
              f"{'unbilled':>9}"
              f"{'5xx':>5}{'webhooks':>11}{'p99 submit':>12}{'p99 poll':>10}{'wall s':>8}")
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.scenario:<14}{r.submitted:>6}{r.finished:>6}{r.lost:>6}{r.succeeded:>5}{r.steps_trained:>8}"
              f"{r.steps_billed:>8}{r.double_billed:>4}{r.unbilled:>9}{r.http_5xx:>5}"
              f"{f'{r.webhooks_verified}/{r.webhooks_expected}':>11}{ms(r.p99_submit_ms):>12}{ms(r.p99_poll_ms):>10}"
              f"{r.wall_s:>8}")
    for r in rows:
        for note in r.notes:
            print(f"  {r.scenario}: {note}")
    print(f"  webhooks: the receiver was down for the run's first {down_s:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/chaos"))
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--kill-job-steps", type=int, default=400)
    parser.add_argument("--submits", type=int, default=500)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--receiver-down-s", type=float, default=180)
    parser.add_argument("--webhook-wait-s", type=float, default=480)
    parser.add_argument("--scenarios", default="task-kill,worker-kill,redis-restart,load")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data_url = tiny_dataset(args.out / "media")
    redis = PrivateRedis(args.out / "redis")
    redis.start()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    receiver = WebhookReceiver(secret)
    rows: list[Row] = []
    with fresh_database(args.out, args.database_url) as database_url:
        env = {key: value for key, value in os.environ.items() if not key.startswith("LTX2T_")}
        env.update({
            "LTX2T_DATA_DIR": str((args.out / "data").resolve()), "LTX2T_DATABASE_URL": database_url,
            "LTX2T_BROKER_URL": redis.url, "LTX2T_MODEL": "tiny", "LTX2T_ALLOW_PRIVATE_URLS": "true",
            "LTX2T_PREPARE_WORKERS": "1", "LTX2T_CHECKPOINT_EVERY_STEPS": str(CHECKPOINT_EVERY),
            "LTX2T_JOB_LEASE_S": str(LEASE_S), "LTX2T_JOB_MAX_ATTEMPTS": str(args.kills + 2),
            "LTX2T_WEBHOOK_SECRET": secret, "OMP_NUM_THREADS": "1",
        })
        service = Service(args.out, env)
        print(f"database: {database_url.split('@')[-1]}; broker: {redis.url}")
        service.start()
        began = time.monotonic()
        threading.Timer(args.receiver_down_s, receiver.up).start()
        chaos = Chaos(args, service, redis, receiver, data_url)
        scenarios = {"task-kill": chaos.task_kill, "worker-kill": chaos.worker_kill,
                     "redis-restart": chaos.redis_restart, "load": chaos.load}
        try:
            for name in args.scenarios.split(","):
                rows.append(chaos.run(name, scenarios[name]))
            remaining = args.receiver_down_s - (time.monotonic() - began)
            if remaining > 0:
                time.sleep(remaining)
            chaos.wait_for_webhooks(rows, args.webhook_wait_s)
            chaos.stop.set()
            chaos.settle(rows)
        finally:
            chaos.stop.set()
            service.stop()
            redis.kill()
            receiver.down()
    print_table(rows, args.receiver_down_s)
    for error in chaos.recorder.errors[:20]:
        print(f"  5xx: {error}")
    report = {"at": dt.datetime.now(dt.UTC).isoformat(), "database": database_url.split(":")[0],
              "rows": [{k: v for k, v in asdict(r).items() if k != "job_ids"} for r in rows],
              "errors": chaos.recorder.errors}
    (args.out / "bench_chaos.json").write_text(json.dumps(report, indent=2))
    clean = all(r.completed_run and r.lost == 0 and r.double_billed == 0 and r.unbilled == 0 and r.http_5xx == 0
                and r.webhooks_verified == r.webhooks_expected for r in rows)
    print("targets met" if clean else "TARGETS MISSED")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
