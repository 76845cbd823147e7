"""A request's training data, from its URL to a processed dataset: fetch, then prepare.

Composed here once for both callers: the CLI's `prepare` (and the local demo) and the service's jobs
(`pipeline/run.py`). Both therefore record the same report.json: the options, plus the request's dataset
fields and adjustments, which `train` on the prepared folder later carries (cli_training.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ltx2trainer.errors import JobCancelled
from ltx2trainer.pipeline.fetch import fetch_dataset
from ltx2trainer.pipeline.preprocess import PrepareOptions, PrepareResult, prepare_dataset
from ltx2trainer.pipeline.preprocess.parallel import CancelCheck, ProgressCallback
from ltx2trainer.schemas import TrainingInput
from ltx2trainer.settings import Settings

DownloadCallback = Callable[[int, int | None], None]  # (bytes received, total bytes or None)
PhaseCallback = Callable[[str], None]  # "fetching", then "preparing"


def fetch_and_prepare(
    training_input: TrainingInput,
    fetch_dir: Path,
    out_dir: Path,
    settings: Settings,
    *,
    source: str | None = None,
    allow_local: bool | None = None,
    on_phase: PhaseCallback | None = None,
    on_download: DownloadCallback | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> PrepareResult:
    """Fetch the training data into `fetch_dir` (kept there: a re-run reuses the download) and prepare it
    into `out_dir` with the request's dataset fields.

    `source` replaces `training_data_url` when the data is elsewhere already (the service's stored upload);
    `allow_local` is `fetch_dataset`'s. `cancel()` is checked while downloading, between the two stages and
    by preparation: JobCancelled. Raises UserInputError for data that cannot be fetched or trained on.
    """
    phase = on_phase or (lambda name: None)

    def check() -> None:
        if cancel is not None and cancel():
            raise JobCancelled("cancelled by the user")

    def downloaded(received: int, total: int | None) -> None:
        if on_download is not None:
            on_download(received, total)
        check()

    phase("fetching")
    fetched = fetch_dataset(source or training_input.training_data_url, fetch_dir, settings,
                            allow_local=allow_local, on_progress=downloaded)
    check()
    phase("preparing")
    return prepare_dataset(
        fetched.root, out_dir, PrepareOptions.from_input(training_input),
        workers=settings.effective_prepare_workers, upstream_ignored=fetched.ignored,
        training_input=training_input, on_progress=on_progress, cancel=cancel,
    )
