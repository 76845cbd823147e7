"""Checkpoints, promotion, continuing and early stopping, end to end against a live service.

Starts `ltx2trainer serve --with-worker` (tiny model; PostgreSQL when one answers locally, else SQLite; the
embedded broker and storage) and drives it over HTTP only, as a user would:

1. a 100-step training on 4 clips with `checkpoint_every_steps: 25`, a validation prompt and
   `holdout_fraction: 0.25`: its checkpoints (steps, losses, cost, files), each LoRA downloaded and loaded;
2. promoting step 50: the output's files compared with the checkpoint's by sha256;
3. a training continued from step 50 (`resume_from`, another learning rate): what it encoded, what it was
   billed, how long it took next to its parent;
4. a training with `early_stopping_patience: 1`: where it stopped, which checkpoint it delivered, what it billed;
5. every job's metrics CSV: one row per step.

    .venv/bin/python bench/checkpoints.py [--out bench-output/checkpoints]

Prints the tables the issue's closing note quotes. Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import sys
import time
import zipfile
from decimal import Decimal
from pathlib import Path

import httpx
import safetensors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.chaos_rig import Service, fresh_database  # noqa: E402
from ltx2trainer.sample_data import ClipSpec, make_clip  # noqa: E402

TERMINAL = {"succeeded", "failed", "cancelled"}
SOURCES = (("smptebars", 440.0), ("testsrc2", 550.0), ("rgbtestsrc", 660.0), ("mandelbrot", 770.0))
FAST = {"number_of_frames": 9, "resolution": "low", "aspect_ratio": "16:9", "rank": 8, "learning_rate": 0.001}


def dataset(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, (source, tone) in enumerate(SOURCES):
            clip = make_clip(folder / f"clip{i}.mp4", ClipSpec(f"clip{i}", source, 0.6, 24, 160, 120, tone, ""))
            zf.write(clip, clip.name)
            zf.writestr(f"clip{i}.txt", f"test clip number {i}")
    return "data:application/zip;base64," + base64.b64encode(archive.read_bytes()).decode()


class User:
    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Key {key}"}, timeout=60)
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)

    def submit(self, body: dict) -> dict:
        response = self.http.post("/v1/trainings", json=body)
        response.raise_for_status()
        return response.json()

    def wait(self, job_id: str, limit_s: float = 900) -> tuple[dict, float]:
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            job = self.http.get(f"/v1/trainings/{job_id}").json()
            if job["status"] in TERMINAL:
                return job, time.monotonic() - started
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} did not finish in {limit_s:.0f} s")

    def get(self, path: str) -> dict:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def download(self, file: dict) -> bytes:
        response = httpx.get(file["url"], timeout=60)
        response.raise_for_status()
        return response.content

    def logs(self, job_id: str) -> list[str]:
        return [line["message"] for line in self.get(f"/v1/trainings/{job_id}/logs?limit=1000")["data"]]

    def csv_rows(self, job_id: str) -> list[list[str]]:
        text = self.http.get(f"/v1/trainings/{job_id}/metrics", params={"format": "csv"}).text
        return list(csv.reader(io.StringIO(text)))[1:]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def show_checkpoints(user: User, job_id: str) -> dict[int, dict]:
    listed = user.get(f"/v1/trainings/{job_id}/checkpoints")["checkpoints"]
    print(f"  {'step':>5} {'train loss':>11} {'held-out':>9} {'cost $':>8} {'LoRA kB':>8} {'tensors':>8} "
          f"{'clip':>5} {'final':>6} {'promoted':>9}")
    for c in listed:
        lora = user.download(c["files"]["lora_file"])
        tensors = len(safetensors.deserialize(lora))
        loss = "-" if c["train_loss"] is None else f"{c['train_loss']:.4f}"
        held = "-" if c["holdout_loss"] is None else f"{c['holdout_loss']:.4f}"
        print(f"  {c['step']:>5} {loss:>11} {held:>9} {c['cost_usd']:>8} {len(lora) / 1024:>8.1f} {tensors:>8} "
              f"{'yes' if c['files']['video'] else '-':>5} {str(c['final']).lower():>6} {str(c['promoted']).lower():>9}")
    return {c["step"]: c for c in listed}


def run(user: User, data_url: str, price: Decimal) -> None:
    print("1. a 100-step training, a checkpoint every 25 steps")
    parent = user.submit({**FAST, "training_data_url": data_url, "number_of_steps": 100, "checkpoint_every_steps": 25,
                          "holdout_fraction": 0.25, "validation": [{"prompt": "a test clip"}],
                          "validation_resolution": "low", "validation_aspect_ratio": "16:9",
                          "validation_number_of_frames": 9})
    job, parent_s = user.wait(parent["id"])
    print(f"  {job['status']} in {parent_s:.1f} s, billed {job['usage']['steps_billed']} steps = "
          f"${job['usage']['amount_usd']}")
    checkpoints = show_checkpoints(user, parent["id"])
    user.check(sorted(checkpoints) == [25, 50, 75, 100], "4 checkpoints: 25, 50, 75, 100 (final)")

    print("2. promote step 50")
    promoted = user.http.post(f"/v1/trainings/{parent['id']}/checkpoints/50/promote").json()["output"]
    for name in ("lora_file", "lora_comfyui_file", "config_file", "video"):
        mine, theirs = sha(user.download(promoted[name])), sha(user.download(checkpoints[50]["files"][name]))
        print(f"  output {name:<18} sha256 {mine}   checkpoint 50's {theirs}")
        user.check(mine == theirs, f"the output's {name} is step 50's")
    user.check(promoted["promoted_step"] == 50, "output.promoted_step == 50")

    print("3. continue from step 50 (100 new steps, learning rate 0.0005)")
    child = user.submit({"resume_from": {"training_id": parent["id"], "step": 50}, "number_of_steps": 100,
                         "learning_rate": 0.0005, "checkpoint_every_steps": 50})
    done, child_s = user.wait(child["id"])
    encoded = next((line for line in user.logs(child["id"]) if line.startswith("encoded ")), "?")
    print(f"  {done['status']} in {child_s:.1f} s (the parent: {parent_s:.1f} s); \"{encoded}\"; "
          f"billed {done['usage']['steps_billed']} steps = ${done['usage']['amount_usd']}")
    config = json.loads(user.download(done["output"]["config_file"]))
    print(f"  config.json parent: {config.get('parent')}")
    user.check(encoded.startswith("encoded 0 samples"), "the continued training encoded no sample")
    user.check(done["usage"]["steps_billed"] == 100 and Decimal(done["usage"]["amount_usd"]) == 100 * price,
               "it was billed its own 100 steps only")
    user.check(config.get("parent") == {"training_id": parent["id"], "step": 50}, "its config.json names its parent")

    print("4. early stopping (patience 1 checkpoint, a checkpoint every 10 of 200 steps)")
    stopping = user.submit({**FAST, "training_data_url": data_url, "number_of_steps": 200, "learning_rate": 0.05,
                            "checkpoint_every_steps": 10, "holdout_fraction": 0.25, "early_stopping_patience": 1})
    stopped_job, stopped_s = user.wait(stopping["id"])
    report = (stopped_job["output"] or {}).get("metrics", {}).get("early_stopping")
    print(f"  {stopped_job['status']} in {stopped_s:.1f} s: {report}; billed {stopped_job['usage']['steps_billed']} "
          f"steps = ${stopped_job['usage']['amount_usd']} (estimated ${stopped_job['estimated_cost_usd']})")
    show_checkpoints(user, stopping["id"])
    user.check(report is not None and report["stopped_at_step"] < 200, "it stopped before its 200 steps")
    if report is not None:
        user.check(stopped_job["usage"]["steps_billed"] == report["stopped_at_step"], "billed the steps it ran")
        user.check(stopped_job["output"]["promoted_step"] == report["best_step"], "its output is the best checkpoint")

    print("5. metrics CSV: one row per step")
    for name, job_id, steps in (("parent", parent["id"], 100), ("continued", child["id"], 100),
                                ("early-stopped", stopping["id"], (report or {}).get("stopped_at_step", 200))):
        rows = user.csv_rows(job_id)
        with_holdout = sum(1 for row in rows if row[-1])
        print(f"  {name:<14} {len(rows):>4} rows, steps {rows[0][0]}..{rows[-1][0]}, {with_holdout} with a held-out loss")
        user.check([int(row[0]) for row in rows] == list(range(1, steps + 1)), f"{name}: steps 1..{steps}")
        user.check(with_holdout > 0, f"{name}: held-out losses (a continuation keeps its parent's held-out samples)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output/checkpoints"))
    parser.add_argument("--database-url", help="default: a fresh local PostgreSQL database, else SQLite")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with fresh_database(args.out, args.database_url) as database_url:
        env = {key: value for key, value in os.environ.items() if not key.startswith("LTX2T_")}
        env.update({"LTX2T_DATA_DIR": str((args.out / "data").resolve()), "LTX2T_DATABASE_URL": database_url,
                    "LTX2T_MODEL": "tiny", "LTX2T_PREPARE_WORKERS": "1", "OMP_NUM_THREADS": "1"})
        service = Service(args.out, env)
        print(f"database: {database_url.split('://')[0]}; service at {service.url}")
        service.start()
        try:
            user = User(service.url, service.new_key("bench"))
            run(user, dataset(args.out / "media"), service.settings.price_per_step)
        finally:
            service.stop()
    print(f"\n{len(user.failures)} check(s) failed" if user.failures else "\nall checks passed")
    return 1 if user.failures else 0


if __name__ == "__main__":
    sys.exit(main())
