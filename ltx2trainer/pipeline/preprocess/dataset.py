"""prepare_dataset: from a folder of user files to the processed dataset (`manifest.py`, docs/dataset-preparation.md).

Order of work: discover files → probe them (parallel) → check the set (one kind, audio policy) → read
captions → detect scenes in long videos (parallel, cached) → plan one task per sample (dropping windows too
short for a training clip) → make the samples (parallel, resumable) → write manifest.jsonl and report.json.

Each finished sample leaves a small completion record under `.state/`; a re-run on the same folder with
the same inputs and options reuses those samples instead of making them again.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import av

from ltx2trainer.errors import UserInputError
from ltx2trainer.hashing import fingerprint
from ltx2trainer.pipeline.extract import IgnoredEntry
from ltx2trainer.pipeline.preprocess.audio import AUDIO_SAMPLE_RATE_HZ
from ltx2trainer.pipeline.preprocess.captions import read_caption, with_trigger
from ltx2trainer.pipeline.preprocess.clip import ClipTask, ClipTooShort, SampleMedia, make_sample
from ltx2trainer.pipeline.preprocess.manifest import (
    MANIFEST_NAME,
    REPORT_NAME,
    STATE_DIR_NAME,
    ManifestRow,
    PrepareOptions,
    dataset_fields,
    write_json_atomically,
    write_manifest,
)
from ltx2trainer.pipeline.preprocess.media import (
    MAX_MEDIA_FILES,
    MediaInfo,
    UnreadableMedia,
    caption_key,
    discover,
    probe_media,
    short_error,
)
from ltx2trainer.pipeline.preprocess.parallel import (
    CancelCheck,
    ProgressCallback,
    make_executor,
    run_parallel,
    threads_per_task,
)
from ltx2trainer.pipeline.preprocess.report import (
    AudioDecision,
    IgnoredFile,
    PrepareError,
    PrepareReport,
    PrepareResult,
    PrepareWarning,
)
from ltx2trainer.pipeline.preprocess.scenes import detect_scenes
from ltx2trainer.schemas import TrainingInput

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def prepare_dataset(
    source_dir: Path,
    out_dir: Path,
    options: PrepareOptions,
    *,
    workers: int = 1,
    upstream_ignored: Iterable[IgnoredEntry] = (),
    training_input: TrainingInput | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> PrepareResult:
    """Turn the user's files under `source_dir` into a processed dataset in `out_dir`.

    `training_input`: the request the options were made from (`PrepareOptions.from_input`); its dataset
    fields and adjustments are recorded in report.json, for `train` on the folder to carry.
    Raises UserInputError (after writing report.json) when the set cannot train: mixed kinds, no usable
    media, too many files, forced audio missing, or no clip long enough.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # A manifest from an earlier run must not outlive a run that fails: it no longer describes the folder.
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    report = PrepareReport(options=options)
    if training_input is not None:
        report.training_input = dataset_fields(training_input)
        report.adjustments = training_input.adjustments
    report.ignored = [IgnoredFile(path=e.path, reason=e.reason) for e in upstream_ignored]
    try:
        # Probing opens each file and decodes one frame: threads of this process do it (FFmpeg releases the
        # GIL), while the worker processes start.
        with make_executor(workers) as executor, ThreadPoolExecutor(max_workers=max(1, workers)) as threads:
            rows = _prepare(_PrepareRun(source_dir, out_dir, options, report, executor, threads,
                                        threads_per_task(workers), on_progress, cancel))
    except UserInputError as exc:
        report.error = PrepareError(code=exc.code, message=exc.message)
        write_json_atomically(out_dir / REPORT_NAME, report.as_dict())
        raise
    write_manifest(out_dir, rows)
    write_json_atomically(out_dir / REPORT_NAME, report.as_dict())
    return PrepareResult(out_dir=out_dir, rows=rows, report=report)


@dataclass(frozen=True)
class _PrepareRun:
    """One run of preparation, as the steps below need it: from where to where, with which options, the
    report it fills, and how work is spread and watched (executor, progress, cancel)."""

    source_dir: Path
    out_dir: Path
    options: PrepareOptions
    report: PrepareReport
    executor: Executor
    threads: Executor  # for light work (probing)
    task_threads: int | None  # FFmpeg threads per task on `executor`
    on_progress: ProgressCallback | None
    cancel: CancelCheck | None

    def parallel(self, function: Callable[[T], R], items: list[T], stage: str, describe: Callable[[T], str],
                 executor: Executor | None = None) -> Iterator[tuple[T, R | BaseException]]:
        """`run_parallel` on this run's executor (or `executor`), progress and cancel check."""
        return run_parallel(executor or self.executor, function, items, stage, describe, self.on_progress,
                            self.cancel)


def _prepare(run: _PrepareRun) -> list[ManifestRow]:
    source_dir, out_dir, options, report = run.source_dir, run.out_dir, run.options, run.report
    found = discover(source_dir)
    report.ignored += [IgnoredFile(path=e.path, reason=e.reason) for e in found.ignored]
    report.counts.media_files = len(found.media)
    if len(found.media) > MAX_MEDIA_FILES:
        raise UserInputError(
            f"the dataset has {len(found.media)} media files; at most {MAX_MEDIA_FILES} are allowed",
            code="too_many_files",
        )
    if not found.media:
        raise UserInputError(
            "no videos (.mp4 .mov .avi .mkv .webm .m4v) or images (.png .jpg .jpeg) found in the training data"
            + _ignored_hint(report),
            code="no_media",
        )

    # 1. Probe every file's content.
    infos: list[MediaInfo] = []
    probes = [(source_dir, rel) for rel in found.media]
    for (_, rel), outcome in run.parallel(_probe, probes, "probing", lambda p: p[1], run.threads):
        if isinstance(outcome, UnreadableMedia):
            report.skip(rel, None, "unreadable", str(outcome))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            infos.append(outcome)
    infos.sort(key=lambda info: info.rel)
    if not infos:
        raise UserInputError(
            f"none of the {len(found.media)} media files could be read: "
            + "; ".join(f"{s.source} ({s.detail})" for s in report.skipped[:5]),
            code="no_usable_media",
        )
    report.kind = _single_kind(infos)
    report.counts.clips_in = len(infos)
    audio_on = _decide_audio(infos, report.kind, options, report)
    captions = _read_captions(run, infos, found.captions)

    # 2. Time windows: whole clips, or the scenes of long videos; too-short ones are reported and dropped.
    windows = _plan_windows(run, infos)

    # 3. Make the samples, reusing those an earlier run finished with the same inputs and options.
    state_dir = out_dir / STATE_DIR_NAME / "samples"
    state_dir.mkdir(parents=True, exist_ok=True)
    made_with = {**options.as_dict(), "audio": audio_on}
    made_with.pop("trigger_phrase")  # captions live in the manifest only; media do not depend on them
    finished: dict[str, SampleMedia] = {}
    pending: dict[str, tuple[ClipTask, str]] = {}
    for window in windows:
        task = ClipTask(window.sample_id, source_dir / window.info.rel, window.info.kind, window.start_s,
                        window.end_s, window.info.rotation, audio_on, out_dir, options, run.task_threads)
        stamp = fingerprint([made_with, window.info.rel, task.source.stat().st_size, window.start_s, window.end_s])
        done = _load_finished(state_dir / f"{task.sample_id}.json", stamp, out_dir)
        if done is not None:
            finished[task.sample_id] = done
            report.counts.reused += 1
        else:
            pending[task.sample_id] = (task, stamp)

    by_id = {window.sample_id: window for window in windows}
    # Biggest first, so that the last task to finish is a small one and no core idles long at the end.
    tasks = sorted((task for task, _ in pending.values()), reverse=True,
                   key=lambda task: _work_estimate(by_id[task.sample_id], task.source, options))
    for task, outcome in run.parallel(make_sample, tasks, "fitting", lambda t: by_id[t.sample_id].info.rel):
        window = by_id[task.sample_id]
        if isinstance(outcome, ClipTooShort):
            report.skip(window.info.rel, window.scene, "too_short", str(outcome))
        elif isinstance(outcome, (av.FFmpegError, OSError, ValueError)):
            report.skip(window.info.rel, window.scene, "unreadable",
                        f"failed while decoding: {short_error(outcome)}")
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            _, stamp = pending[task.sample_id]
            write_json_atomically(state_dir / f"{task.sample_id}.json", {"stamp": stamp, **asdict(outcome)})
            finished[task.sample_id] = outcome

    rows = [
        _row(by_id[sample_id], media, captions[by_id[sample_id].info.rel], options)
        for sample_id, media in sorted(finished.items())
    ]
    report.counts.samples_out = len(rows)
    if not rows:
        raise UserInputError(_nothing_usable_message(report, options), code="no_usable_clips")
    return rows


@dataclass(frozen=True)
class _Window:
    """A stretch of one source that becomes one sample. Times in seconds of the source's timeline."""

    info: MediaInfo
    scene: tuple[float, float] | None
    scene_index: int | None
    start_s: float
    end_s: float

    @property
    def sample_id(self) -> str:
        stem = re.sub(r"[^\w.-]+", "_", Path(self.info.rel).stem).strip("._")[:40] or "sample"
        sample_id = f"{stem}-{fingerprint(self.info.rel)[:8]}"
        return sample_id if self.scene_index is None else f"{sample_id}-scene{self.scene_index + 1:03d}"


def _plan_windows(run: _PrepareRun, infos: list[MediaInfo]) -> list[_Window]:
    options, report = run.options, run.report
    scenes = _detect_long_video_scenes(run, infos)
    windows: list[_Window] = []
    for info in infos:
        if info.kind == "image":
            windows.append(_Window(info, None, None, 0.0, 0.0))
            continue
        video_scenes = scenes.get(info.rel, [])
        if len(video_scenes) > 1:
            report.scenes[info.rel] = video_scenes
            report.counts.scenes += len(video_scenes)
            candidates = [_Window(info, scene, i, scene[0], scene[1]) for i, scene in enumerate(video_scenes)]
        else:
            candidates = [_Window(info, None, None, 0.0, info.duration_s or 0.0)]
        for window in candidates:
            length_s = window.end_s - window.start_s
            available = int(length_s * options.frame_rate + 1e-3)
            if not options.auto_scale_input and available < options.number_of_frames:
                report.skip(
                    info.rel, window.scene, "too_short",
                    f"{'scene' if window.scene else 'clip'} lasts {length_s:.2f} s = {available} frames at "
                    f"{options.frame_rate} fps; {options.number_of_frames} frames "
                    f"({options.clip_duration_s:.2f} s) needed",
                )
                continue
            windows.append(window)
    return windows


def _detect_long_video_scenes(run: _PrepareRun, infos: list[MediaInfo]) -> dict[str, list[tuple[float, float]]]:
    """Scene lists of the videos longer than the split threshold (when splitting is on), cached on disk."""
    source_dir, options = run.source_dir, run.options
    if not options.split_input_into_scenes:
        return {}
    cache_dir = run.out_dir / STATE_DIR_NAME / "scenes"
    cache_dir.mkdir(parents=True, exist_ok=True)
    scenes: dict[str, list[tuple[float, float]]] = {}
    to_detect: list[tuple[Path, Path, str]] = []  # (video, cache file, rel)
    for info in infos:
        if info.kind != "video" or (info.duration_s or 0) <= options.split_input_duration_threshold:
            continue
        cache = cache_dir / f"{fingerprint([info.rel, (source_dir / info.rel).stat().st_size])}.json"
        if cache.exists():
            scenes[info.rel] = [tuple(scene) for scene in json.loads(cache.read_text(encoding="utf-8"))]
        else:
            to_detect.append((source_dir / info.rel, cache, info.rel))
    for (_, cache, rel), outcome in run.parallel(_detect, to_detect, "detecting scenes", lambda item: item[2]):
        if isinstance(outcome, BaseException):
            run.report.warnings.append(PrepareWarning(
                source=rel, message=f"scene detection failed; video kept whole: {short_error(outcome)}"))
            continue
        write_json_atomically(cache, outcome)
        scenes[rel] = outcome
    return scenes


def _read_captions(run: _PrepareRun, infos: list[MediaInfo], caption_files: dict[str, str]) -> dict[str, str]:
    """Final caption (trigger phrase included) per media file."""
    captions: dict[str, str] = {}
    for info in infos:
        caption_file = caption_files.get(caption_key(info.rel))
        text = ""
        if caption_file is not None:
            caption = read_caption(run.source_dir / caption_file)
            text = caption.text
            if caption.warning:
                run.report.warnings.append(PrepareWarning(source=caption_file, message=caption.warning))
        captions[info.rel] = with_trigger(text, run.options.trigger_phrase)
    return captions


def _decide_audio(infos: list[MediaInfo], kind: str, options: PrepareOptions, report: PrepareReport) -> bool:
    if kind == "image":
        if options.with_audio is True:
            raise UserInputError(
                "with_audio is true but the dataset holds images, which carry no audio", code="audio_missing"
            )
        report.audio = AudioDecision(enabled=False, reason="images carry no audio")
        return False
    if options.with_audio is False:
        report.audio = AudioDecision(enabled=False, reason="with_audio is false")
        return False
    missing = [info.rel for info in infos if not info.has_audio]
    if missing and options.with_audio is True:
        raise UserInputError(
            f"with_audio is true but {len(missing)} of {len(infos)} videos have no audio track: "
            + ", ".join(missing[:10]) + (", …" if len(missing) > 10 else ""),
            code="audio_missing",
        )
    if missing:
        report.audio = AudioDecision(
            enabled=False,
            reason=f"{len(missing)} of {len(infos)} videos have no audio track (audio is used only if all do)",
            videos_without_audio=missing,
        )
        return False
    report.audio = AudioDecision(enabled=True, reason="every video has an audio track" if options.with_audio is None
                                 else "with_audio is true")
    return True


def _single_kind(infos: list[MediaInfo]) -> str:
    videos = [i.rel for i in infos if i.kind == "video"]
    images = [i.rel for i in infos if i.kind == "image"]
    if videos and images:
        raise UserInputError(
            f"the dataset mixes {len(videos)} videos and {len(images)} images "
            f"(videos: {', '.join(videos[:3])}{', …' if len(videos) > 3 else ''}; "
            f"images: {', '.join(images[:3])}{', …' if len(images) > 3 else ''}); "
            "a dataset must hold only videos or only images",
            code="mixed_media",
        )
    return "video" if videos else "image"


def _row(window: _Window, media: SampleMedia, caption: str, options: PrepareOptions) -> ManifestRow:
    is_video = window.info.kind == "video"
    return ManifestRow(
        id=window.sample_id,
        source=window.info.rel,
        scene=window.scene,
        media=media.media,
        kind=window.info.kind,
        caption=caption,
        width=options.width,
        height=options.height,
        frames=media.frames,
        fps=float(options.frame_rate) if is_video else None,
        audio=media.audio,
        audio_sample_rate=AUDIO_SAMPLE_RATE_HZ if media.audio else None,
        audio_peak=media.audio_peak,
    )


def _work_estimate(window: _Window, source: Path, options: PrepareOptions) -> float:
    """Roughly how much work a sample is: the source bytes its window spans. Decoding grows with them, and so
    does encoding, since detailed pictures take more bytes in the source and more work in the encoder."""
    info = window.info
    if info.kind == "image" or not info.duration_s:
        return float(source.stat().st_size)
    read_s = (window.end_s - window.start_s) if options.auto_scale_input else options.clip_duration_s
    return source.stat().st_size * min(1.0, read_s / info.duration_s)


def _load_finished(record: Path, stamp: str, out_dir: Path) -> SampleMedia | None:
    """The sample an earlier run finished, if it was made from the same inputs and its files are there."""
    if not record.exists():
        return None
    payload = json.loads(record.read_text(encoding="utf-8"))
    if payload.pop("stamp", None) != stamp:
        return None
    media = SampleMedia(**payload)
    if not (out_dir / media.media).exists() or (media.audio and not (out_dir / media.audio).exists()):
        return None
    return media


def _nothing_usable_message(report: PrepareReport, options: PrepareOptions) -> str:
    reasons: dict[str, int] = {}
    for skipped in report.skipped:
        reasons[skipped.reason] = reasons.get(skipped.reason, 0) + 1
    text = "no training sample could be made: " + ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in reasons.items())
    if "too_short" in reasons:
        text += (
            f". Every clip must last at least {options.clip_duration_s:.2f} s "
            f"({options.number_of_frames} frames at {options.frame_rate} fps); lower number_of_frames, "
            "or set auto_scale_input to re-time short clips"
        )
    return text


def _ignored_hint(report: PrepareReport) -> str:
    if not report.ignored:
        return ""
    names = ", ".join(entry.path for entry in report.ignored[:5])
    return f" (ignored: {names}{', …' if len(report.ignored) > 5 else ''})"


def _probe(item: tuple[Path, str]) -> MediaInfo:
    return probe_media(*item)


def _detect(item: tuple[Path, Path, str]) -> list[tuple[float, float]]:
    return detect_scenes(item[0])
