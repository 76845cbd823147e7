"""Service settings: one pydantic-settings class read from `LTX2T_*` environment variables.

Every collaborator (database, broker, storage, model) has an embedded default that needs no server, so
the whole product runs on one machine out of the box; production points the same settings at PostgreSQL,
Redis, S3 and real weights (docs/service.md, Deployment). There is no module-level instance: call `get_settings()` at an
entry point and pass the object down.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3
MIB = 1024**2


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ltx2trainer"


class Settings(BaseSettings):
    """All knobs of the service. Sizes are bytes, durations seconds."""

    model_config = SettingsConfigDict(env_prefix="LTX2T_", extra="ignore", validate_default=True)

    # --- where things live (embedded defaults derive from data_dir) ---
    data_dir: Path = Field(default_factory=_default_data_dir, description="Root of all local state.")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///<data_dir>/ltx2trainer.db.")
    broker_url: str = Field("", description="Celery broker; default kombu's filesystem transport (no server).")
    storage_url: str = Field("", description="file://<dir> or s3://bucket/prefix; default file://<data_dir>/storage.")
    model: str = Field("tiny", description="'tiny' or 'tiny-2.3' (random-weight LTX-2 for CPU), an official "
                       "single-file checkpoint (.safetensors), or a diffusers-format folder / hub id.")
    text_encoder: str = Field("", description="Gemma-3 folder paired with an official single-file checkpoint.")
    price_per_step: Decimal = Field(Decimal("0.0048"), ge=0, description="USD charged per training step.")

    # --- GPU memory planning (ltx2trainer.planning, docs/memory.md) ---
    gpu_memory_gb: float = Field(
        0.0, ge=0, description="Memory of the workers' GPUs in GB (GiB, as sold). 0: workers detect it with torch; "
        "the gateway then cannot check requests. Set on the gateway to refuse requests that fit no worker.")
    gpu_supports_fp8: bool = Field(
        False, description="The workers' GPUs convert fp8 in hardware (compute capability 8.9+), so the planner may "
        "choose an fp8 base. Workers also detect it.")
    plan_model: str = Field(
        "", description="What the planner sizes (a preset such as ltx-2-19b or ltx-2.3, or a path) when it is not "
        "LTX2T_MODEL, e.g. on a gateway without the weights; default: LTX2T_MODEL.")
    compile_blocks: bool = Field(
        False, description="Workers compile the transformer's blocks with torch.compile (regional compilation): "
        "faster steps on GPUs after a one-off compile at the first step (docs/training.md).")

    # --- fetching training data ---
    download_max_bytes: int = Field(10 * GIB, gt=0, description="Largest accepted download.")
    download_connect_timeout_s: float = Field(10.0, gt=0)
    download_read_timeout_s: float = Field(60.0, gt=0, description="Longest silence while downloading.")
    download_max_redirects: int = Field(5, ge=0)
    download_deadline_s: float = Field(
        7200.0, gt=0, description="Longest a whole download may take, redirects included (a server trickling "
        "bytes cannot hold a worker longer).")
    allow_private_urls: bool = Field(
        False,
        description="Allow URLs that resolve to loopback, private, link-local or metadata addresses "
        "(never enable on a multi-tenant service; tests use it for a loopback server).",
    )
    allow_file_urls: bool = Field(False, description="Allow file:// and plain local paths as training_data_url.")

    # --- extracting archives (checked before bytes are written) ---
    extract_max_total_bytes: int = Field(20 * GIB, gt=0, description="Sum of uncompressed sizes, nested included.")
    extract_max_entries: int = Field(20_000, gt=0, description="Entries over all nested archives.")
    extract_max_compression_ratio: float = Field(
        200.0, gt=1, description="Largest uncompressed/compressed ratio of one entry (zip bombs)."
    )
    extract_max_nesting_depth: int = Field(3, ge=0, description="How deep zips inside zips are opened.")

    # --- dataset preparation ---
    prepare_workers: int = Field(0, ge=0, description="Parallel clip workers; 0 = one per CPU core.")

    # --- the service ---
    environment: Literal["development", "production"] = Field(
        "development", description="production refuses to start without real secrets."
    )
    public_base_url: str = Field("", description="Base URL clients reach the gateway at; default: the request's.")
    max_request_bytes: int = Field(
        64 * 2**20, gt=0, description="Largest request body (a data: URL of a ~47 MB zip); larger ones get a 413 "
        "that says to upload by URL. Bodies over 64 KiB are read only for a valid API key.")
    metrics_require_key: bool = Field(
        False, description="/metrics answers only requests with an admin key (the scraper sends one); off: open "
        "to anyone who reaches the gateway (bind or firewall it then).")
    status_cache_ttl_s: float = Field(
        0.2, ge=0, description="How long a status-poll answer is replayed to the same caller (0: never).")
    file_url_secret: str = Field("", description="HMAC key of signed local file URLs (dev: generated).")
    file_url_ttl_s: int = Field(3600, gt=0, description="Lifetime of signed file URLs.")
    webhook_secret: str = Field("", description="Standard Webhooks signing secret, whsec_… (dev: generated).")
    webhook_timeout_s: float = Field(15.0, gt=0, description="One delivery attempt's time limit.")
    webhook_max_attempts: int = Field(10, ge=1, description="Delivery attempts before giving up.")
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (MinIO, moto); default AWS.")
    s3_public_endpoint_url: str = Field("", description="Endpoint download URLs are signed for; default s3_endpoint_url.")
    s3_region: str = Field("us-east-1")
    checkpoint_every_steps: int = Field(250, gt=0, description="Training checkpoints (what a crashed job resumes from).")
    job_lease_s: int = Field(120, gt=0, description="A running job's lease; renewed by the worker's heartbeat.")
    dataset_retention_days: float = Field(
        0, ge=0, description="Remove a dataset's stored files once no training has used it for this many days "
        "(its entry stays, `expired`, saying so); 0 keeps datasets until their owner deletes them.")
    job_max_attempts: int = Field(3, ge=1, description="Runs of one job (crash recovery) before it fails.")
    broker_visibility_timeout_s: int = Field(
        48 * 3600, gt=0, description="Redis: redeliver unacknowledged tasks only after this long (> longest job)."
    )
    fal_app_ids: list[str] = Field(
        default_factory=lambda: ["fal-ai/ltx2-video-trainer"], description="App ids the queue facade answers to."
    )
    status_log_limit: int = Field(500, gt=0, description="Log lines returned in a status response.")

    @model_validator(mode="after")
    def _derive_embedded_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'ltx2trainer.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://localhost/"  # folders under data_dir/broker (jobs/celery_app.py)
        if not self.storage_url:
            self.storage_url = (self.data_dir / "storage").resolve().as_uri()
        return self

    @property
    def effective_prepare_workers(self) -> int:
        return self.prepare_workers or max(1, os.cpu_count() or 1)

    def secret(self, name: Literal["file_url_secret", "webhook_secret"]) -> str:
        """A signing secret: the configured one, or in development one generated once into the data dir.

        Production has no usable default: starting without the secret is an error naming the variable.
        """
        configured = getattr(self, name)
        if configured:
            return configured
        if self.environment == "production":
            raise RuntimeError(f"LTX2T_{name.upper()} must be set when LTX2T_ENVIRONMENT=production")
        return _development_secrets(self.data_dir)[name]


def check_secrets(settings: Settings) -> None:
    """Fail fast (at startup, naming the variable) when a secret this deployment needs is missing."""
    settings.secret("webhook_secret")
    if settings.storage_url.startswith("file:"):
        settings.secret("file_url_secret")


def _development_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets shared by the gateway and the workers of one development install (data_dir/secrets.json)."""
    path = data_dir / "secrets.json"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fresh = {
            "file_url_secret": secrets.token_urlsafe(32),
            "webhook_secret": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        tmp = path.with_name(f".secrets.json.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(fresh, handle)
        try:
            os.link(tmp, path)  # first writer wins; a concurrent second process reads the first one's file
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return json.loads(path.read_text())


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment; keyword overrides win (used by the CLI and tests)."""
    return Settings(**overrides)  # type: ignore[arg-type]
