"""A sweep's page (`/dashboard/sweeps/{id}`) in headless Chromium.

Seeded through the real API and worker code, as tests/test_datasets.py does: a dataset created with
`POST /v1/datasets` from a tiny captioned zip and prepared by `execute_preparation`; a 2×2 sweep (learning_rate ×
rank, 100 steps each) posted to `POST /v1/sweeps`; three of its four trainings run by `execute_job`, the fourth left
queued (so the page shows a mixed state and keeps refreshing). The page is read from Chromium's rendered DOM.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from decimal import Decimal

import httpx
import pytest
import uvicorn

from ltx2trainer.api import create_app
from ltx2trainer.jobs.keys import create_key
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services
from ltx2trainer.worker.prepare_runner import execute_preparation
from ltx2trainer.worker.runner import execute_job
from tests.live_service import FAST_JOB, free_port, tiny_dataset_url
from tests.test_dashboard import ARTIFACTS, CHROMIUM, assert_asks_for_a_key, assert_not_found, chromium, rendered

pytestmark = [pytest.mark.slow,  # the module's fixture prepares a dataset and runs three 100-step trainings
              pytest.mark.skipif(CHROMIUM is None or shutil.which("ffmpeg") is None,
                                 reason="scripts/setup.sh installs ffmpeg, scripts/test.sh Debian's chromium")]
DATASET_FIELDS = {key: FAST_JOB[key] for key in ("number_of_frames", "resolution", "aspect_ratio")}
GRID = {"learning_rate": [0.001, 0.003], "rank": [8, 16]}
BASE = {"number_of_steps": 100, "seed": 3}
LEFT_QUEUED = {"learning_rate": 0.003, "rank": 16}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep_page")
    settings = Settings(data_dir=folder / "data", prepare_workers=1)
    services = Services(settings)
    keys = {owner: create_key(services.db, owner).token for owner in ("alice", "bob")}
    app = create_app(settings, services=services)
    app.state.poll_cache.ttl_s = 0
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    alice = httpx.Client(base_url=base, headers={"Authorization": f"Key {keys['alice']}"}, timeout=60)
    created = alice.post("/v1/datasets", json={"training_data_url": tiny_dataset_url(folder / "media"),
                                               **DATASET_FIELDS})
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    assert execute_preparation(dataset_id, settings, services=services) == "ready"
    posted = alice.post("/v1/sweeps", json={"dataset_id": dataset_id, "grid": GRID, "base": BASE})
    assert posted.status_code == 201, posted.text
    sweep = posted.json()
    for point in sweep["trainings"]:
        if point["values"] != LEFT_QUEUED:
            assert execute_job(point["training_id"], settings, worker_id="w1", services=services) == "succeeded"
    yield {"base": base, "page": lambda sweep_id: f"{base}/dashboard/sweeps/{sweep_id}", "api": alice,
           "sweep": sweep["id"], "dataset": dataset_id, "price": settings.price_per_step,
           "profile": folder / "chromium", **keys}
    alice.close()
    server.should_exit = True
    thread.join(timeout=10)
    services.db.engine.dispose()


def _compared(site) -> dict:
    response = site["api"].get(f"/v1/sweeps/{site['sweep']}")
    assert response.status_code == 200, response.text
    return response.json()


def test_the_page_is_served_without_caching(site):
    response = httpx.get(site["page"](site["sweep"]))
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    assert "text/html" in response.headers["content-type"] and 'data-testid="comparison-table"' in response.text
    assert "http://" not in response.text and "https://" not in response.text  # nothing fetched from elsewhere


def test_the_comparison_shows_every_training_and_marks_the_best(site):
    compared, price = _compared(site), site["price"]
    assert compared["finished"] == 3 and compared["best"] is not None and compared["best"]["by"] == "final_loss"
    page = rendered(f"{site['page'](site['sweep'])}#key={site['alice']}", site["profile"])
    assert page.texts("sweep-id") == [site["sweep"]]
    [dataset_link] = page.attributes("dataset-link")
    assert dataset_link["href"] == f"/dashboard/datasets/{site['dataset']}"
    assert page.texts("dataset-link") == [site["dataset"]]
    assert page.texts("sweep-finished") == ["3 of 4"]
    assert page.texts("sweep-cost") == [f"${compared['cost_usd']}"] and Decimal(compared["cost_usd"]) == 300 * price
    assert "refreshing" in page.texts("sweep-progress")[0]

    # the columns: the grid's fields in order, then the comparison's
    assert [c["data-key"] for c in page.attributes("column")] == [
        "value:learning_rate", "value:rank", "status", "steps", "cost", "final_loss", "holdout_loss", "training"]
    rows = page.attributes("sweep-row")
    assert len(rows) == 4
    by_id = {t["training_id"]: t for t in compared["trainings"]}
    assert [row["data-id"] for row in rows] == [t["training_id"] for t in compared["trainings"]]
    values = page.attributes("row-value")
    assert [(v["data-field"], json.loads(v["data-value"])) for v in values] == [
        (field, t["values"][field]) for t in compared["trainings"] for field in GRID]
    assert page.texts("row-value") == ["0.001", "8", "0.001", "16", "0.003", "8", "0.003", "16"]
    statuses = [row["data-status"] for row in rows]
    assert statuses == ["succeeded", "succeeded", "succeeded", "queued"]
    assert page.texts("row-steps") == ["100", "100", "100", "0"]
    costs = page.texts("row-cost")
    for row, shown in zip(rows, costs, strict=True):
        api = by_id[row["data-id"]]
        assert row["data-cost"] == api["cost_usd"] and shown == f"${api['cost_usd']} / ${api['estimated_cost_usd']}"
        assert Decimal(api["estimated_cost_usd"]) == 100 * price
        assert Decimal(api["cost_usd"]) == (100 * price if api["status"] == "succeeded" else 0)
    final = page.attributes("row-final-loss")
    for row, cell, text in zip(rows, final, page.texts("row-final-loss"), strict=True):
        api = by_id[row["data-id"]]
        if api["status"] == "succeeded":
            assert float(cell["data-value"]) == api["final_loss"] and text == f"{api['final_loss']:.4f}"
        else:
            assert cell["data-value"] == "" and text == "–"
    assert len(page.texts("row-holdout-loss")) == 4

    # the best row: marked, highlighted, the same as the API's; the note says by which loss
    best = compared["best"]
    marked = [row for row in rows if row["data-best"] == "true"]
    assert [row["data-id"] for row in marked] == [best["training_id"]] and marked[0]["class"] == "best"
    assert json.loads(marked[0]["data-values"]) == best["values"]
    assert len(page.attributes("best-badge")) == 1
    assert best["loss"] == min(t["final_loss"] for t in compared["trainings"] if t["status"] == "succeeded")
    [note] = page.texts("best-note")
    assert "lowest final loss" in note and f"{best['loss']:.4f}" in note
    assert page.attributes("best-note")[0]["data-by"] == "final_loss"
    assert f"final loss {best['loss']:.4f}" in page.texts("best-summary")[0]

    # every row links to its training's page
    assert [a["href"] for a in page.attributes("training-link")] == [
        f"/dashboard/trainings/{t['training_id']}" for t in compared["trainings"]]
    assert page.attributes("back-link")[0]["href"] == "/dashboard"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "sweep_page.png"
    taken = chromium(f"{site['page'](site['sweep'])}#key={site['alice']}", site["profile"], f"--screenshot={shot}",
                     "--window-size=1280,1200")
    assert taken.returncode == 0 and shot.stat().st_size > 30_000


def test_a_two_field_grid_has_a_shaded_loss_matrix(site):
    compared = _compared(site)
    page = rendered(f"{site['page'](site['sweep'])}#key={site['alice']}", site["profile"])
    [matrix] = page.attributes("loss-matrix")
    assert matrix["data-by"] == compared["best"]["by"] == "final_loss"
    assert [json.loads(r["data-value"]) for r in page.attributes("matrix-row")] == GRID["learning_rate"]
    assert [json.loads(c["data-value"]) for c in page.attributes("matrix-column")] == GRID["rank"]
    cells = page.attributes("matrix-cell")
    assert len(cells) == 4
    by_values = {(t["values"]["learning_rate"], t["values"]["rank"]): t for t in compared["trainings"]}
    for cell, text in zip(cells, page.texts("matrix-cell"), strict=True):
        point = (json.loads(cell["data-row"]), json.loads(cell["data-column"]))
        api = by_values[point]
        assert cell["data-id"] == api["training_id"]
        assert (cell["data-best"] == "true") == (api["training_id"] == compared["best"]["training_id"])
        if api["status"] == "succeeded":
            assert float(cell["data-loss"]) == api["final_loss"] and text == f"{api['final_loss']:.4f}"
            assert "background:hsl(" in cell["style"].replace(" ", "")
        else:  # the queued one: its status, unshaded
            assert point == (LEFT_QUEUED["learning_rate"], LEFT_QUEUED["rank"])
            assert cell["data-loss"] == "" and text == "queued" and "style" not in cell
    # shaded from low (green, hue 130) to high (red, hue 0)
    measured = [cell for cell in cells if cell["data-loss"]]
    hues = {float(cell["data-loss"]): int(re.search(r"hsl\((\d+)", cell["style"]).group(1)) for cell in measured}
    assert hues[min(hues)] == 130 and hues[max(hues)] == 0
    assert [hues[loss] for loss in sorted(hues)] == sorted(hues.values(), reverse=True)


def test_a_queued_training_keeps_the_page_refreshing(site):
    page = chromium(f"{site['page'](site['sweep'])}#key={site['alice']}", site["profile"], "--dump-dom")
    assert 'data-loaded="true"' in page.stdout and 'data-refreshing="true"' in page.stdout
    assert 'data-status="queued"' in page.stdout


def test_another_owners_or_a_missing_sweep_is_not_found(site):
    for url in (f"{site['page'](site['sweep'])}#key={site['bob']}",
                f"{site['page']('no-such-sweep')}#key={site['alice']}"):
        assert_not_found(url, site["profile"])


def test_without_a_key_the_page_asks_for_one(site):
    assert_asks_for_a_key(site["page"](site["sweep"]), site["profile"])


def test_the_dataset_page_links_each_training_to_its_sweep(site):
    trainings = site["api"].get(f"/v1/datasets/{site['dataset']}").json()["trainings"]
    assert len(trainings) == 4 and {t["sweep_id"] for t in trainings} == {site["sweep"]}
    page = rendered(f"{site['base']}/dashboard/datasets/{site['dataset']}#key={site['alice']}", site["profile"])
    assert len(page.attributes("training-row")) == 4
    assert [a["href"] for a in page.attributes("sweep-link")] == [f"/dashboard/sweeps/{site['sweep']}"] * 4


@pytest.mark.parametrize(("sort", "key"), [("final_loss", "final_loss"), ("-rank", "-value:rank")])
def test_the_table_sorts_by_a_column(site, sort, key):
    """Clicking a header sorts by it and writes ?sort= (the same sort a URL gives, shown here without a click)."""
    compared = _compared(site)
    page = rendered(f"{site['page'](site['sweep'])}?sort={sort}#key={site['alice']}", site["profile"])
    assert page.attributes("comparison-table")[0]["data-sort"] == key
    ids = [row["data-id"] for row in page.attributes("sweep-row")]
    if sort == "final_loss":  # lowest first, the queued one (no loss yet) last: the best on top
        done = sorted((t for t in compared["trainings"] if t["final_loss"] is not None), key=lambda t: t["final_loss"])
        assert ids[:3] == [t["training_id"] for t in done] and ids[0] == compared["best"]["training_id"]
        assert by_status(compared, ids[3]) == "queued"
    else:
        assert [json.loads(row["data-values"])["rank"] for row in page.attributes("sweep-row")] == [16, 16, 8, 8]


def by_status(compared: dict, training_id: str) -> str:
    return next(t["status"] for t in compared["trainings"] if t["training_id"] == training_id)
