"""The billing dashboard in a real browser (headless Chromium from Debian): what a user sees."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import uvicorn

from ltx2trainer.api import create_app
from ltx2trainer.billing.ledger import record_steps
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.settings import Settings
from ltx2trainer.storage import job_prefix
from ltx2trainer.wiring import Services
from tests.live_service import free_port

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PRICE = Decimal("0.0048")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="scripts/setup.sh installs Debian's chromium")


class Elements(HTMLParser):
    """Text and attributes of the elements carrying data-testid, from Chromium's rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self._open: list[list] = []

    def handle_starttag(self, tag, attrs) -> None:
        attributes = dict(attrs)
        if "data-testid" in attributes:
            self._open.append([attributes, ""])
        elif self._open:
            self._open.append(None)

    def handle_endtag(self, tag) -> None:
        if self._open:
            entry = self._open.pop()
            if entry is not None:
                self.found.append((entry[1].strip(), entry[0]))

    def handle_data(self, data) -> None:
        for entry in self._open:
            if entry is not None:
                entry[1] += data

    def texts(self, testid: str) -> list[str]:
        return [text for text, attributes in self.found if attributes.get("data-testid") == testid]

    def attributes(self, testid: str) -> list[dict[str, str]]:
        return [attributes for _, attributes in self.found if attributes.get("data-testid") == testid]


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--window-size=1280,1300"]
    return subprocess.run([CHROMIUM, *flags, *extra, url], capture_output=True, text=True, timeout=120, check=False)


def rendered(url: str, profile: Path) -> Elements:
    page = chromium(url, profile, "--dump-dom")
    assert page.returncode == 0, page.stderr[-2000:]
    assert 'data-loaded="true"' in page.stdout, "the page did not load its data"
    elements = Elements()
    elements.feed(page.stdout)
    return elements


def assert_not_found(url: str, profile: Path) -> None:
    """A page for another owner's resource, or a missing one: the same not-found panel, nothing loaded."""
    page = chromium(url, profile, "--dump-dom")
    assert page.returncode == 0
    assert 'data-loaded="true"' not in page.stdout and 'data-error="not-found"' in page.stdout
    assert "it does not exist, or it belongs to another owner (not found)" in page.stdout
    assert 'id="problem" hidden' not in page.stdout and 'id="app" hidden' in page.stdout


def assert_asks_for_a_key(url: str, profile: Path) -> None:
    """A page opened without a key shows the sign-in panel and loads nothing; a bad key is named as such."""
    page = chromium(url, profile, "--dump-dom")
    assert 'id="signin"' in page.stdout and 'id="signin" hidden' not in page.stdout
    assert 'data-loaded="true"' not in page.stdout
    bad = chromium(f"{url}#key=key_nope:nope", profile, "--dump-dom")
    assert "That key is not valid." in bad.stdout


def rendered_media(url: str, profile: Path, *testids: str, attempts: int = 4) -> Elements:
    """Like `rendered`, for a page whose media elements must have settled (data-ready or data-error set).

    Headless Chromium's virtual-time budget waits for pending fetches but not for the media pipeline, which
    reads a clip's metadata on its own threads; on a loaded machine the DOM can be dumped before a clip's
    `loadedmetadata` fires. Such a dump says nothing either way, so it is rendered again: a clip that
    fails sets data-error and a clip that never loads stays unsettled, and both still fail the caller."""
    for _ in range(attempts):
        page = rendered(url, profile)
        media = [element for testid in testids for element in page.attributes(testid)]
        if all("data-ready" in element or "data-error" in element for element in media):
            break
    return page


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A live gateway with trainings of every kind: succeeded, running, cancelled, failed, queued."""
    data = tmp_path_factory.mktemp("dashboard")
    settings = Settings(data_dir=data / "data")
    services = Services(settings)
    lifecycle = services.lifecycle
    alice = create_key(services.db, "alice").token
    bob = create_key(services.db, "bob").token
    admin = create_key(services.db, "ops", is_admin=True).token
    from ltx2trainer.billing.ledger import initial_usage

    def training(owner: str, steps: int, done: int, outcome: str) -> str:
        job, _ = lifecycle.submit(owner, {"training_data_url": "https://example.com/d.zip", "number_of_steps": steps},
                                  usage=initial_usage(PRICE))
        if outcome == "queued":
            return job.id
        lifecycle.start(job.id, "worker-1", lease_s=3600, max_attempts=3)
        lifecycle.set_phase(job.id, "training")
        record_steps(services.db, job.id, list(range(1, done + 1)), PRICE)
        lifecycle.report_progress(job.id, {"step": done, "total_steps": steps, "loss": 0.0421, "eta_s": 95.0})
        if outcome == "succeeded":
            files = {}
            for field, name, content, kind in (("lora_file", "lora.safetensors", b"weights", "application/octet-stream"),
                                               ("config_file", "config.json", b"{}", "application/json"),
                                               ("video", "validation.mp4", b"mp4 bytes", "video/mp4")):
                key = job_prefix(owner, job.id) + name
                services.storage.put_bytes(key, content, kind)
                files[field] = {"key": key, "file_name": name, "content_type": kind, "file_size": len(content)}
            lifecycle.succeed(job.id, {**files, "debug_dataset": None})
        elif outcome == "cancelled":
            lifecycle.request_cancel(job.id)
            lifecycle.cancel(job.id)
        elif outcome == "failed":
            lifecycle.fail(job.id, "invalid_archive", "the upload is not a zip")
        return job.id

    jobs = {"succeeded": training("alice", 2000, 2000, "succeeded"),
            "cancelled": training("alice", 500, 137, "cancelled"),
            "failed": training("alice", 300, 0, "failed"),
            "running": training("alice", 1000, 250, "running"),
            "queued": training("alice", 100, 0, "queued"),
            "bob": training("bob", 1000, 1000, "succeeded")}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, services=services), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield {"url": f"http://127.0.0.1:{port}/dashboard", "alice": alice, "bob": bob, "admin": admin, "jobs": jobs,
           "profile": data / "chromium"}
    server.should_exit = True
    thread.join(timeout=10)


def test_the_dashboard_shows_spend_price_history_and_live_progress(site):
    page = rendered(f"{site['url']}#key={site['alice']}", site["profile"])
    # settled: 2000 × 0.0048 + 137 × 0.0048 (cancelled) + 0 (failed) = 10.2576
    assert page.texts("total-spend") == ["$10.2576"]
    assert page.texts("unit-price") == ["$0.0048"]
    assert page.texts("training-count") == ["5"] and page.texts("running-count") == ["1"]
    rows = {row["data-id"]: row for row in page.attributes("training-row")}
    jobs = site["jobs"]
    assert set(rows) == {jobs[name] for name in ("succeeded", "cancelled", "failed", "running", "queued")}
    assert {name: (rows[jobs[name]]["data-status"], rows[jobs[name]]["data-cost"])
            for name in ("succeeded", "cancelled", "failed", "running", "queued")} == {
        "succeeded": ("succeeded", "9.6000"), "cancelled": ("cancelled", "0.6576"),
        "failed": ("failed", "0.0000"), "running": ("running", "1.2000"), "queued": ("queued", "0.0000")}
    [running] = page.texts("running-job")
    assert "training" in running and "step 250/1000" in running and "$1.2000" in running and "loss 0.0421" in running
    [chart] = page.attributes("spend-chart")
    rows_text = " ".join(page.texts("training-row"))
    assert "2000/2000" in rows_text and "137/500" in rows_text
    # the succeeded training links its LoRA, validation video and config, and the links download them
    links = {text: attributes["href"] for text, attributes in page.found if attributes.get("data-testid") == "output-link"}
    assert set(links) == {"LoRA", "video", "config"}
    assert httpx.get(links["LoRA"]).content == b"weights"
    assert httpx.get(links["video"]).content == b"mp4 bytes"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = chromium(f"{site['url']}#key={site['alice']}", site["profile"], f"--screenshot={ARTIFACTS / 'dashboard.png'}")
    assert shot.returncode == 0 and (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_the_spend_chart_has_a_bar_per_day_with_todays_total(site):
    page = chromium(f"{site['url']}#key={site['alice']}", site["profile"], "--dump-dom")
    bars = re.findall(r'<rect class="bar"[^>]*data-date="(\d{4}-\d\d-\d\d)"[^>]*data-amount="([^"]+)"', page.stdout)
    assert len(bars) == 30
    assert bars[-1][1] == "10.2576" and all(amount == "0" for _, amount in bars[:-1])


def test_an_admin_sees_every_owner(site):
    page = rendered(f"{site['url']}#key={site['admin']}", site["profile"])
    assert page.texts("total-spend") == ["$15.0576"]  # alice's 10.2576 + bob's 4.8000
    assert page.texts("training-count") == ["6"]
    assert site["jobs"]["bob"] in {row["data-id"] for row in page.attributes("training-row")}


def test_without_a_key_the_page_asks_for_one(site):
    assert_asks_for_a_key(site["url"], site["profile"])


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/trainings/x", "/dashboard/datasets/x",
                                  "/dashboard/sweeps/x"])
def test_every_page_is_served_whole_with_its_shared_parts(site, path):
    """The pages share their head lines and sign-in panel (static/_head.html, _signin.html): each is served
    with them filled in once, and with its own title."""
    html = httpx.get(site["url"].removesuffix("/dashboard") + path).text
    assert "<!--#include" not in html
    assert html.count('id="signin-form"') == 1 and html.count('href="/dashboard/static/common.css"') == 1
    assert html.count("<title>ltx2trainer · ") == 1 and html.index("<meta charset") < html.index("<title>")
