"""Service commands: `serve` (gateway, optionally with a worker), `worker`, `keys`, `submit`.

Registered on the app of `ltx2trainer.cli`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ltx2trainer.cli_common import AspectChoice, ResolutionChoice, WithAudio, console, given_fields, input_option
from ltx2trainer.settings import get_settings

keys_app = typer.Typer(help="Create, list and revoke API keys (run on the server's machine).", no_args_is_help=True)
db_app = typer.Typer(help="The job store's schema (LTX2T_DATABASE_URL).", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the current schema, keeping its rows (serve and worker also do this at start)."""
    from ltx2trainer.jobs.db import Database
    from ltx2trainer.jobs.migrate import current_revision, head_revision, upgrade

    db = Database(get_settings().database_url)
    before = current_revision(db)
    after = upgrade(db)
    console.print(f"schema at revision {after} (was {before or 'none'}; head {head_revision()})")


@db_app.command("revision")
def db_revision(message: Annotated[str, typer.Argument(help="What changed in the models.")]) -> None:
    """For maintainers: autogenerate a migration from the models' difference to the current head, to review."""
    from ltx2trainer.jobs.migrate import write_revision
    from ltx2trainer.wiring import all_tables

    write_revision(message, all_tables())


def configure_json_logging(level: int = logging.INFO) -> None:
    """Structured logs: one JSON object per line on stderr (what log collectors parse)."""
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                       rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    with_worker: Annotated[bool, typer.Option(help="Also start a training worker (embedded setups).")] = False,
) -> None:
    """Run the HTTP gateway (and, with --with-worker, a worker process beside it)."""
    import uvicorn

    from ltx2trainer.api import create_app

    configure_json_logging()
    settings = get_settings()
    supervisor = None
    if with_worker:  # restarted whenever it dies (ltx2trainer/supervise.py)
        from ltx2trainer.supervise import Supervisor

        supervisor = Supervisor(_start_worker_process)
        supervisor.start()
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)
    finally:
        if supervisor is not None:
            supervisor.stop()


def _start_worker_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ltx2trainer.cli", "worker"], env=os.environ.copy(),
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def _die_with_parent() -> None:
    """In the worker child: get SIGTERM when `serve` dies. uvicorn re-raises the SIGTERM it handled after
    shutting down, which ends `serve` before a `finally` could stop the worker, so the kernel must."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1  # noqa: N806 - the kernel's name
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def worker(
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    queues: Annotated[str, typer.Option(help="Comma-separated queues to serve: trainings (needs the model) and "
                                             "prepare (dataset preparation, CPU only).")] = "trainings,prepare",
) -> None:
    """Run a worker: one task at a time (run one per GPU; a CPU machine can serve `--queues prepare` alone)."""
    from ltx2trainer.jobs.celery_app import PREPARE_QUEUE, TRAINING_QUEUE
    from ltx2trainer.worker.app import run_worker

    chosen = tuple(name.strip() for name in queues.split(",") if name.strip())
    unknown = sorted(set(chosen) - {TRAINING_QUEUE, PREPARE_QUEUE})
    if not chosen or unknown:
        raise typer.BadParameter(f"unknown queue(s) {', '.join(unknown) or '(none)'}; use "
                                 f"{TRAINING_QUEUE} and/or {PREPARE_QUEUE}", param_hint="--queues")
    configure_json_logging(getattr(logging, loglevel.upper(), logging.INFO))
    run_worker(get_settings(), loglevel=loglevel, queues=chosen)


@keys_app.command("create")
def keys_create(
    owner: Annotated[str, typer.Option(help="The account the key acts for.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    admin: Annotated[bool, typer.Option(help="May see every owner's usage.")] = False,
    spend_limit: Annotated[str | None, typer.Option(help="USD this key may spend in all (default: no limit).")] = None,
) -> None:
    """Create a key and print it (it is shown only once)."""
    from ltx2trainer.billing.ledger import set_spend_limit
    from ltx2trainer.jobs.keys import create_key
    from ltx2trainer.wiring import Services

    db = Services(get_settings()).db
    limit = _parse_usd(spend_limit)
    created = create_key(db, owner, name=name, is_admin=admin)
    if limit is not None:
        set_spend_limit(db, created.key_id, limit)
    console.print(f"key for {created.owner} ({created.key_id}); keep it secret, it is not shown again:")
    print(created.token)


@keys_app.command("list")
def keys_list(owner: Annotated[str | None, typer.Option(help="Only this owner's keys.")] = None) -> None:
    """List keys (ids, owners, state; never secrets)."""
    from ltx2trainer.billing.ledger import usd
    from ltx2trainer.jobs.keys import list_keys
    from ltx2trainer.wiring import Services

    # Plain tab-separated lines on stdout: readable, and easy to grep or cut.
    print("key_id\towner\tname\tadmin\tcreated\trevoked\tspend_limit_usd")
    for row in list_keys(Services(get_settings()).db, owner):
        print("\t".join([row.id, row.owner, row.name, "yes" if row.is_admin else "no",
                         row.created_at.isoformat(timespec="seconds"),
                         row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "-",
                         usd(row.spend_limit_nano_usd) if row.spend_limit_nano_usd is not None else "-"]))


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (key_…).")]) -> None:
    """Revoke a key: requests with it are refused from now on (within 10 s on running gateways)."""
    from ltx2trainer.jobs.keys import revoke_key
    from ltx2trainer.wiring import Services

    if not revoke_key(Services(get_settings()).db, key_id):
        console.print(f"[red]no key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@keys_app.command("set-limit")
def keys_set_limit(
    key_id: Annotated[str, typer.Argument(help="The key id (key_…).")],
    spend_limit: Annotated[str, typer.Argument(help="USD, or 'none' to remove the limit.")],
) -> None:
    """Set (or remove) a key's spending limit: submits that would exceed it are refused with HTTP 402."""
    from ltx2trainer.billing.ledger import set_spend_limit
    from ltx2trainer.wiring import Services

    limit = None if spend_limit.lower() == "none" else _parse_usd(spend_limit)
    if not set_spend_limit(Services(get_settings()).db, key_id, limit):
        console.print(f"[red]no key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"{key_id}: spending limit {'removed' if limit is None else f'${limit}'}")


def _parse_usd(value: str | None):
    from decimal import Decimal, InvalidOperation

    if value is None:
        return None
    try:
        amount = Decimal(value.strip().lstrip("$"))
    except InvalidOperation:
        console.print(f"[red]not an amount of dollars:[/] {value!r}")
        raise typer.Exit(2) from None
    if amount < 0:
        console.print("[red]a spending limit cannot be negative[/]")
        raise typer.Exit(2)
    return amount


def submit(
    source: Annotated[str, typer.Argument(help="The training zip: an http(s) URL or a local file.")],
    server: Annotated[str, typer.Option(envvar="LTX2T_SERVER_URL", help="Gateway URL.")] = "http://127.0.0.1:8000",
    key: Annotated[str, typer.Option(envvar="LTX2T_API_KEY", help="API key (key_…:secret).")] = "",
    # Input options left out are not sent: the server's schema supplies its defaults (shown by --help).
    number_of_steps: Annotated[int | None, input_option("number_of_steps")] = None,
    rank: Annotated[int | None, input_option("rank")] = None,
    learning_rate: Annotated[float | None, input_option("learning_rate")] = None,
    number_of_frames: Annotated[int | None, input_option("number_of_frames")] = None,
    frame_rate: Annotated[int | None, input_option("frame_rate")] = None,
    resolution: Annotated[ResolutionChoice | None, input_option("resolution")] = None,
    aspect_ratio: Annotated[AspectChoice | None, input_option("aspect_ratio")] = None,
    with_audio: Annotated[WithAudio | None, input_option("with_audio")] = None,
    trigger_phrase: Annotated[str | None, input_option("trigger_phrase")] = None,
    validation_prompt: Annotated[list[str], typer.Option(help="Repeat for two.")] = [],  # noqa: B006
    input_json: Annotated[Path | None, typer.Option(help="A JSON file of further input fields.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Submit at most once for this key.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
    download: Annotated[Path | None, typer.Option(help="Where to save the outputs (default ./<job id>).")] = None,
) -> None:
    """Submit a training over HTTP, follow it with a progress bar, and download its outputs."""
    from ltx2trainer.client import TrainerClient, training_data_url

    if not key:
        console.print("[red]an API key is needed:[/] --key or LTX2T_API_KEY (create one with `ltx2trainer keys create`)")
        raise typer.Exit(2)
    body: dict[str, Any] = {
        "training_data_url": training_data_url(source),
        "validation": [{"prompt": prompt} for prompt in validation_prompt],
        **given_fields(number_of_steps=number_of_steps, rank=rank, learning_rate=learning_rate,
                       number_of_frames=number_of_frames, frame_rate=frame_rate, resolution=resolution,
                       aspect_ratio=aspect_ratio, with_audio=with_audio, trigger_phrase=trigger_phrase),
    }
    if input_json is not None:
        body.update(json.loads(input_json.read_text(encoding="utf-8")))
    client = TrainerClient(server, key)
    try:
        follow_and_download(client, body, idempotency_key=idempotency_key, wait=wait, download=download)
    finally:
        client.close()


def follow_and_download(client, body: dict[str, Any], *, idempotency_key: str | None = None, wait: bool = True,
                        download: Path | None = None) -> dict[str, Any]:
    """Submit, show progress until the job ends, download its outputs; returns the final job."""
    from ltx2trainer.client import ApiError

    try:
        job = client.submit(body, idempotency_key=idempotency_key)
    except ApiError as exc:
        _print_api_error(exc)
        raise typer.Exit(1) from None
    console.print(f"submitted {job['id']} (estimated cost ${job['estimated_cost_usd']})")
    for adjustment in job.get("adjustments") or []:
        console.print(f"[yellow]note:[/] {adjustment['field']} {adjustment['requested']} → {adjustment['used']}")
    if not wait:
        return job
    with Progress(TextColumn("{task.fields[state]:<22}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task("job", total=job["progress"]["total_steps"], state="queued", loss="-")

        def update(current: dict[str, Any]) -> None:
            state = current["status"] + (f" · {current['phase']}" if current.get("phase") else "")
            if current.get("queue_position"):
                state += f" (#{current['queue_position']})"
            progress = current["progress"]
            loss = f"{progress['loss']:.4f}" if progress.get("loss") is not None else "-"
            bar.update(task, completed=progress["step"], state=state, loss=loss)

        job = client.wait(job["id"], on_update=update)
    console.print(f"job {job['id']}: {job['status']}")
    if job.get("error"):
        console.print(f"[red]{job['error']['type']}:[/] {job['error']['message']}")
    if job.get("output"):
        saved = client.download_outputs(job, download or Path(job["id"]))
        for name, path in saved.items():
            console.print(f"{name:<18} {path}")
    if job["status"] == "failed":
        raise typer.Exit(1)
    return job


def _print_api_error(exc) -> None:
    if isinstance(exc.detail, list):
        for item in exc.detail:
            where = ".".join(str(part) for part in item.get("loc", [])[1:]) or "input"
            console.print(f"[red]invalid {where}:[/] {item.get('msg')}")
    else:
        console.print(f"[red]error (HTTP {exc.status_code}):[/] {exc.detail}")
