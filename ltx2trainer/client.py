"""A small client of the native API (used by `ltx2trainer submit` and the demo): submit, follow, download.

Local zips are sent as `data:` URLs, so a user with a file on their laptop needs no upload step.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ltx2trainer.schemas import OUTPUT_FILES

TERMINAL = ("succeeded", "failed", "cancelled")
DATA_URL_MAX_BYTES = 256 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


def training_data_url(source: str) -> str:
    """URLs pass through; a local file becomes a data: URL."""
    if "://" in source or source.startswith("data:"):
        return source
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"training data not found: {path}")
    if path.stat().st_size > DATA_URL_MAX_BYTES:
        raise ValueError(f"{path} is larger than {DATA_URL_MAX_BYTES // 2**20} MiB; put it at an http(s) URL instead")
    return "data:application/zip;base64," + base64.b64encode(path.read_bytes()).decode()


class TrainerClient:
    def __init__(self, server: str, api_key: str, *, timeout_s: float = 60.0) -> None:
        self.http = httpx.Client(base_url=server.rstrip("/"), timeout=timeout_s,
                                 headers={"Authorization": f"Key {api_key}"})

    def close(self) -> None:
        self.http.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json()

    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self.http.post("/v1/trainings", json=body, headers=headers))

    def get(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/trainings/{job_id}"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.post(f"/v1/trainings/{job_id}/cancel"))

    def wait(self, job_id: str, *, on_update: Callable[[dict[str, Any]], None] | None = None,
             poll_s: float = 0.5, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the job is terminal; `on_update` sees every status."""
        started = time.monotonic()
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def download_outputs(self, job: dict[str, Any], folder: Path) -> dict[str, Path]:
        """Download every output file of a finished job into `folder`; returns name → path."""
        folder.mkdir(parents=True, exist_ok=True)
        saved = {}
        for name in OUTPUT_FILES:
            file = (job.get("output") or {}).get(name)
            if not file:
                continue
            path = folder / Path(file["file_name"]).name
            with httpx.stream("GET", file["url"], timeout=120, follow_redirects=True) as response:
                if response.status_code != 200:
                    raise ApiError(response.status_code, f"downloading {name} failed")
                with open(path, "wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
            saved[name] = path
        return saved
