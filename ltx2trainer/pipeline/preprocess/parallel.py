"""Run preparation work in parallel across CPU cores, with progress reports and cooperative cancel.

Processes by default (decoding, filtering and encoding are CPU-bound); threads inside daemonic processes
such as a Celery prefork child, which may not start children of their own.
"""

from __future__ import annotations

import multiprocessing
import os
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


# Imported once by the fork server, before it forks the workers: each worker starts with them loaded instead
# of importing them itself (about a CPU second each, most of it scenedetect/OpenCV, numpy and the settings).
WORKER_PRELOAD = ["ltx2trainer.pipeline.preprocess.dataset"]


def make_executor(workers: int) -> Executor:
    if workers <= 1:
        return ThreadPoolExecutor(max_workers=1)
    if multiprocessing.current_process().daemon:
        # Daemonic processes (a Celery prefork child) may not start children; FFmpeg releases the GIL
        # while decoding, filtering and encoding, so threads still overlap most of the work.
        return ThreadPoolExecutor(max_workers=workers)
    # forkserver, not fork: the calling process may hold threads (torch, HTTP clients) that fork would copy
    # in a broken state.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    executor.submit(os.getpid)  # start the workers now, while the caller probes the files
    return executor


def threads_per_task(workers: int) -> int | None:
    """FFmpeg threads for one task when `workers` tasks run at once: None (FFmpeg's choice, a thread per
    core) for a single worker, else the cores divided among the workers. Threads beyond that only compete:
    on 2 cores, 2 workers with threaded decoders and encoders took about 10% more CPU time for the same clips."""
    if workers <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


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
