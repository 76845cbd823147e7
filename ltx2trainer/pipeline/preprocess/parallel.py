"""Run preparation work in parallel across CPU cores, with progress reports and cooperative cancel.

Processes by default (decoding, filtering and encoding are CPU-bound); threads inside daemonic processes
such as a Celery prefork child, which may not start children of their own.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TypeVar

from ltx2trainer.errors import JobCancelled

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """A progress report: `done` of `total` items of `stage` finished, the last one being `item`."""

    stage: str  # "probing" | "detecting scenes" | "fitting"
    done: int
    total: int
    item: str = ""


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


def make_executor(workers: int) -> Executor:
    if workers <= 1:
        return ThreadPoolExecutor(max_workers=1)
    if multiprocessing.current_process().daemon:
        # Daemonic processes (a Celery prefork child) may not start children; FFmpeg releases the GIL
        # while decoding, filtering and encoding, so threads still overlap most of the work.
        return ThreadPoolExecutor(max_workers=workers)
    # forkserver, not fork: the calling process may hold threads (torch, HTTP clients) that fork would copy
    # in a broken state.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))


def run_parallel(
    executor: Executor,
    function: Callable[[T], R],
    items: list[T],
    stage: str,
    describe: Callable[[T], str],
    on_progress: ProgressCallback | None,
    cancel: CancelCheck | None,
) -> Iterator[tuple[T, R | BaseException]]:
    """Run `function` over `items`, yielding (item, result or exception) as each finishes."""
    if not items:
        return
    futures: dict[Future, T] = {executor.submit(function, item): item for item in items}
    try:
        for done, future in enumerate(as_completed(futures), start=1):
            if cancel is not None and cancel():
                raise JobCancelled("cancelled while preparing the dataset")
            item = futures[future]
            exc = future.exception()
            if on_progress is not None:
                on_progress(Progress(stage, done, len(items), describe(item)))
            yield item, (exc if exc is not None else future.result())
    finally:
        for future in futures:
            future.cancel()
