"""Benchmark of dataset preparation (`prepare_dataset`) against the ffmpeg and scenedetect CLIs.

    .venv/bin/python bench/prepare.py [--out DIR] [--skip-long] [--repeat N]

Generates a synthetic dataset with the ffmpeg CLI (not timed), then measures, on this machine:
prepare's wall time with and without scene splitting, the same fit done by one ffmpeg process per clip,
PySceneDetect's CLI against our `detect_scenes`, prepare's peak resident memory (its whole process tree),
and a 10-minute 720p video. Checks that prepare's outputs match the CLI's (size, frame count, audio) and
that every cut lies within one frame of the scenedetect CLI's. Prints a plain-text report and writes it as
JSON to OUT/bench_prepare.json. Each prepare run happens in a child process so that its memory can be
measured from outside.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import av
import numpy as np
import psutil
import soundfile

from ltx2trainer.pipeline.preprocess import PrepareOptions, Progress, prepare_dataset
from ltx2trainer.pipeline.preprocess.audio import AUDIO_SAMPLE_RATE_HZ
from ltx2trainer.pipeline.preprocess.scenes import detect_scenes
from ltx2trainer.pipeline.preprocess.video import (
    SCALE_FLAGS,
    VIDEO_CODEC,
    VIDEO_ENCODER_OPTIONS,
    VIDEO_PIXEL_FORMAT,
)
from ltx2trainer.sample_data import make_scene_video

OPTIONS = PrepareOptions(number_of_frames=89, frame_rate=25, width=768, height=768)
SCENE_COUNT = 5
SCENE_LENGTH_S = 8.0
LONG_VIDEO_FPS = (25, 30)  # one 40 s scene video per entry, 1280x720
LONG_VIDEO_SIZE_PX = (1280, 720)
TEN_MINUTE_VIDEO_S = 600
RSS_POLL_INTERVAL_S = 0.05
RSS_TARGET_MB = 1536
PREPARE_RATIO_TARGET = 0.5  # prepare's wall time over the ffmpeg CLI's
SCENES_RATIO_TARGET = 0.5  # our scene detection's wall time over the scenedetect CLI's
AUDIO_TOLERANCE = 1e-3  # largest sample difference between prepare's WAV and the CLI's, at the same peak
MB = 1024 * 1024
SCENEDETECT_CLI = Path(sys.executable).with_name("scenedetect")
STAGES = ("probing", "detecting scenes", "fitting")
PREPARE_RUNS = ("prepare_split", "prepare_no_split", "audio_prepare")
CLI_RUNS = ("ffmpeg_cli_s", "ffmpeg_cli_all_wav_s", "audio_ffmpeg_cli_s")


@dataclass(frozen=True)
class BenchClip:
    """One short synthetic clip. audio_channels 0 means no audio track."""

    name: str
    source: str  # lavfi video source
    seconds: float
    fps: int
    width: int
    height: int
    audio_channels: int
    audio_rate_hz: int = 44_100


# All last at least 89 frames at 25 fps (3.56 s), so every clip yields a sample.
CLIPS = (
    BenchClip("qvga_24fps", "testsrc2", 3.8, 24, 320, 240, 1, 44_100),
    BenchClip("wide_360p_25fps", "smptebars", 4.0, 25, 640, 360, 2, 48_000),
    BenchClip("hd_720p_30fps", "testsrc2", 5.0, 30, 1280, 720, 2, 48_000),
    BenchClip("hd_720p_60fps", "rgbtestsrc", 4.5, 60, 1280, 720, 1, 48_000),
    BenchClip("square_480_24fps", "mandelbrot", 5.5, 24, 480, 480, 2, 44_100),
    BenchClip("portrait_360_30fps", "testsrc2", 6.0, 30, 360, 640, 1, 44_100),
    BenchClip("portrait_720_25fps", "smptebars", 4.0, 25, 720, 1280, 2, 48_000),
    BenchClip("qhd_540p_60fps", "testsrc2", 3.8, 60, 960, 540, 2, 44_100),
    BenchClip("square_720_25fps", "cellauto", 5.0, 25, 720, 720, 1, 48_000),
    BenchClip("fwvga_30fps", "testsrc2", 4.5, 30, 854, 480, 0),
    BenchClip("portrait_540_60fps", "rgbtestsrc", 6.0, 60, 540, 960, 0),
    BenchClip("vga_24fps", "life", 4.0, 24, 640, 480, 0),
)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def make_bench_clip(path: Path, clip: BenchClip) -> None:
    """Render a clip (H.264, AAC tone: mono 440 Hz or stereo 440/660 Hz) with its caption file."""
    args = ["-f", "lavfi", "-i",
            f"{clip.source}=size={clip.width}x{clip.height}:rate={clip.fps},trim=duration={clip.seconds}"]
    if clip.audio_channels == 1:
        tone = f"sine=frequency=440:sample_rate={clip.audio_rate_hz}:duration={clip.seconds}"
        args += ["-f", "lavfi", "-i", tone]
    elif clip.audio_channels == 2:
        tone = "0.4*sin(2*PI*440*t)|0.4*sin(2*PI*660*t)"
        args += ["-f", "lavfi", "-i", f"aevalsrc={tone}:s={clip.audio_rate_hz}:d={clip.seconds}"]
    args += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    args += ["-c:a", "aac"] if clip.audio_channels else []
    ffmpeg(*args, str(path))
    path.with_suffix(".txt").write_text(f"{clip.source} test pattern, {clip.name}\n", encoding="utf-8")


def generate_dataset(data_dir: Path, audio_dir: Path) -> None:
    """12 short clips and the 40 s scene videos in data_dir; hard links of the ones with audio in audio_dir.

    Skipped when a previous run made the same set (a hidden marker file; prepare ignores hidden files).
    """
    marker, recipe = data_dir / ".complete", repr((CLIPS, SCENE_COUNT, SCENE_LENGTH_S, LONG_VIDEO_FPS))
    if not marker.exists() or marker.read_text(encoding="utf-8") != recipe:
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        for clip in CLIPS:
            make_bench_clip(data_dir / f"{clip.name}.mp4", clip)
        width, height = LONG_VIDEO_SIZE_PX
        for i, fps in enumerate(LONG_VIDEO_FPS):
            video = data_dir / f"scenes_{i + 1}.mp4"
            make_scene_video(video, scenes=SCENE_COUNT, scene_seconds=SCENE_LENGTH_S, fps=fps,
                             width=width, height=height, tone_hz=440.0 + 110 * i)
            video.with_suffix(".txt").write_text("five test patterns, cut hard\n", encoding="utf-8")
        marker.write_text(recipe, encoding="utf-8")
    shutil.rmtree(audio_dir, ignore_errors=True)
    audio_dir.mkdir(parents=True)
    for video in source_videos(data_dir):
        if has_audio(video):
            for file in (video, video.with_suffix(".txt")):
                os.link(file, audio_dir / file.name)


def generate_ten_minute_video(path: Path) -> None:
    """testsrc2 1280x720 at 25 fps with a tone, TEN_MINUTE_VIDEO_S long; cached across runs."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=25:duration={TEN_MINUTE_VIDEO_S}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={TEN_MINUTE_VIDEO_S}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(tmp))
    tmp.rename(path)


def source_videos(folder: Path) -> list[Path]:
    """The .mp4 files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix == ".mp4" and not p.name.startswith("."))


def has_audio(video: Path) -> bool:
    """Whether ffprobe finds an audio stream in `video`."""
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=index",
                            "-of", "csv=p=0", str(video)], check=True, capture_output=True, text=True)
    return bool(probe.stdout.strip())


# ---------------------------------------------------------------------------------------------- prepare


def child_prepare(spec: dict) -> None:
    """In the child process: run prepare_dataset once and write wall time, stage times and outcome."""
    events: list[tuple[str, float]] = []
    start = time.perf_counter()

    def on_progress(progress: Progress) -> None:
        events.append((progress.stage, time.perf_counter() - start))

    result = prepare_dataset(Path(spec["source"]), Path(spec["out"]), PrepareOptions(**spec["options"]),
                             workers=os.cpu_count() or 1, on_progress=on_progress)
    wall_s = time.perf_counter() - start
    # A stage's span runs from the end of the stage before it to its own last progress event.
    stages_s, previous_end_s = {}, 0.0
    for stage in STAGES:
        ends = [t for s, t in events if s == stage]
        if ends:
            stages_s[stage], previous_end_s = max(ends) - previous_end_s, max(ends)
    stages_s["manifest and report"] = wall_s - previous_end_s
    report = result.report.as_dict()
    Path(spec["result"]).write_text(json.dumps({
        "wall_s": wall_s, "stages_s": stages_s, "samples": len(result.rows), "audio": report["audio"],
        "skipped": report["skipped"], "scenes": report["scenes"],
    }), encoding="utf-8")


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    """(sum, max) of the resident set sizes in bytes of `root` and all its descendants."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    sizes = []
    for process in processes:
        try:
            sizes.append(process.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return sum(sizes), max(sizes, default=0)


def measure_prepare(source: Path, out_dir: Path, options: PrepareOptions) -> dict:
    """Run prepare on a fresh out_dir in a child process, sampling its tree's RSS every RSS_POLL_INTERVAL_S.

    wall_s is timed inside the child around the prepare_dataset call; process_wall_s also counts the
    child's interpreter start-up and imports.
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    result_file = out_dir.with_name(f"{out_dir.name}.result.json")
    spec = {"source": str(source), "out": str(out_dir), "options": asdict(options),
            "result": str(result_file)}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)])
    root = psutil.Process(child.pid)
    peak_tree = peak_process = 0
    while child.poll() is None:
        tree, largest = tree_rss(root)
        peak_tree, peak_process = max(peak_tree, tree), max(peak_process, largest)
        time.sleep(RSS_POLL_INTERVAL_S)
    if child.returncode != 0:
        raise RuntimeError(f"prepare failed on {source} (exit status {child.returncode})")
    process_wall_s = time.perf_counter() - start
    result = json.loads(result_file.read_text(encoding="utf-8"))
    return {**result, "process_wall_s": process_wall_s, "peak_rss_tree_mb": peak_tree / MB,
            "peak_rss_process_mb": peak_process / MB}


def fastest(runs: list[dict]) -> dict:
    """The fastest of several prepare runs, with the highest peak RSS seen over all of them."""
    best = dict(min(runs, key=lambda run: run["wall_s"]))
    for key in ("peak_rss_tree_mb", "peak_rss_process_mb"):
        best[key] = max(run[key] for run in runs)
    return best


# ----------------------------------------------------------------------------------------- ffmpeg CLI


def ffmpeg_fit_command(source: Path, out_dir: Path, with_audio: bool) -> list[str]:
    """One ffmpeg invocation doing prepare's fit: 89 frames at 25 fps, 768x768 fill + centre crop, same
    encoder settings; with_audio adds a second output, the first 89/25 s as a stereo 16 kHz float WAV."""
    width, height, fps, frames = OPTIONS.width, OPTIONS.height, OPTIONS.frame_rate, OPTIONS.number_of_frames
    video_filter = (f"fps={fps},scale={width}:{height}:force_original_aspect_ratio=increase"
                    f":flags={SCALE_FLAGS},crop={width}:{height},format={VIDEO_PIXEL_FORMAT}")
    command = ["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), "-map", "0:v:0", "-vf", video_filter,
               "-frames:v", str(frames), "-c:v", VIDEO_CODEC]
    for name, value in VIDEO_ENCODER_OPTIONS.items():
        command += [f"-{name}", value]
    command.append(str(out_dir / f"{source.stem}.mp4"))
    if with_audio:
        command += ["-map", "0:a:0", "-t", f"{OPTIONS.clip_duration_s:g}", "-ac", "2", "-ar",
                    str(AUDIO_SAMPLE_RATE_HZ), "-c:a", "pcm_f32le", str(out_dir / f"{source.stem}.wav")]
    return command


def time_ffmpeg_cli(sources: list[Path], out_dir: Path, with_audio: bool) -> float:
    """Wall time of one ffmpeg process per source, run one after the other (a shell loop)."""
    commands = [ffmpeg_fit_command(source, out_dir, with_audio and has_audio(source)) for source in sources]
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    start = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------ scene detection


def scenedetect_cli(video: Path, out_dir: Path) -> tuple[float, list[float]]:
    """Wall time of `scenedetect detect-content list-scenes` on one video, and the scene starts it found."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    subprocess.run([str(SCENEDETECT_CLI), "-i", str(video), "-o", str(out_dir), "-q",
                    "detect-content", "list-scenes"], check=True)
    elapsed = time.perf_counter() - start
    with open(out_dir / f"{video.stem}-Scenes.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]  # the first line is the cut list, the second the header
    column = rows[0].index("Start Time (seconds)")
    return elapsed, [float(row[column]) for row in rows[1:]]


def compare_scene_detection(videos: list[Path], work_dir: Path, repeat: int) -> dict:
    """Sequential per-video times of ours and of the CLI (best of `repeat`), our 2-process pool time,
    the CLI's bare start-up time, and whether the scene starts agree with the generated cuts."""
    expected = [round(i * SCENE_LENGTH_S, 3) for i in range(SCENE_COUNT)]
    ours_s, cli_s, ours_starts, cli_starts, frame_s = {}, {}, {}, {}, {}
    for video in videos:
        ours_runs, cli_runs = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            scenes = detect_scenes(video)
            ours_runs.append(time.perf_counter() - start)
            elapsed, starts = scenedetect_cli(video, work_dir)
            cli_runs.append(elapsed)
        ours_s[video.name], cli_s[video.name] = min(ours_runs), min(cli_runs)
        ours_starts[video.name] = [round(s, 3) for s, _ in scenes]
        cli_starts[video.name] = [round(s, 3) for s in starts]
        with av.open(str(video)) as container:
            frame_s[video.name] = 1 / float(container.streams.video[0].average_rate)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(videos)) as pool:
        list(pool.map(detect_scenes, videos))
    pool_s = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([str(SCENEDETECT_CLI), "version"], check=True, capture_output=True)
    cli_startup_s = time.perf_counter() - start
    return {
        "ours_sequential_s": sum(ours_s.values()), "cli_sequential_s": sum(cli_s.values()),
        "ours_per_video_s": ours_s, "cli_per_video_s": cli_s, "ours_pool_s": pool_s,
        "cli_startup_s": cli_startup_s, "expected_starts_s": expected,
        "ours_starts_s": ours_starts, "cli_starts_s": cli_starts,
        "cuts_match": all(ours_starts[v.name] == cli_starts[v.name] == expected for v in videos),
        "cuts_within_a_frame": all(
            len(ours_starts[v.name]) == len(cli_starts[v.name]) == len(expected)
            and all(abs(a - b) <= frame_s[v.name] + 1e-6 for a, b in zip(ours_starts[v.name], cli_starts[v.name]))
            for v in videos),
    }


# ------------------------------------------------------------------------------------ output checks


def video_shape(path: Path) -> tuple[int, int, int]:
    """(width, height, decoded frame count) of a video file."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return frames[0].width, frames[0].height, len(frames)


def compare_outputs(prepared: Path, cli_dir: Path) -> dict:
    """prepare's samples against the CLI's files of the same sources: size and frame count of each video,
    and each WAV's channels, rate and length, and its samples once both are at the same peak (prepare
    normalises the peak; the CLI does not)."""
    videos_differ, audio_differ, audio_compared, worst = [], [], 0, 0.0
    for line in (prepared / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        stem = Path(row["source"]).stem
        ours, theirs = video_shape(prepared / row["media"]), video_shape(cli_dir / f"{stem}.mp4")
        if ours != theirs or ours != (OPTIONS.width, OPTIONS.height, OPTIONS.number_of_frames):
            videos_differ.append(f"{stem}: ours {ours}, CLI {theirs}")
        if row["audio"] is None:
            continue
        a, rate_a = soundfile.read(prepared / row["audio"], dtype="float64", always_2d=True)
        b, rate_b = soundfile.read(cli_dir / f"{stem}.wav", dtype="float64", always_2d=True)
        audio_compared += 1
        if a.shape != b.shape or rate_a != rate_b:
            audio_differ.append(f"{stem}: ours {a.shape} at {rate_a} Hz, CLI {b.shape} at {rate_b} Hz")
            continue
        peak_a, peak_b = np.abs(a).max(), np.abs(b).max()
        deviation = float(np.abs(a / peak_a - b / peak_b).max()) if peak_a and peak_b else float(peak_a != peak_b)
        worst = max(worst, deviation)
        if deviation > AUDIO_TOLERANCE:
            audio_differ.append(f"{stem}: samples differ by up to {deviation:.2g}")
    return {"videos_match": not videos_differ, "videos_differ": videos_differ,
            "audio_match": not audio_differ, "audio_differ": audio_differ, "audio_compared": audio_compared,
            "audio_max_deviation": worst}


# ------------------------------------------------------------------------------------------- report


def environment() -> dict:
    import av
    import cv2
    import numpy
    import scenedetect

    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "av": av.__version__, "scenedetect": scenedetect.__version__, "numpy": numpy.__version__,
            "opencv": cv2.__version__, "ffmpeg": version.stdout.splitlines()[0]}


def measure_short_dataset(data_dir: Path, audio_dir: Path, runs: Path, repeat: int) -> dict:
    """prepare and the ffmpeg CLI on the 14-video set (and on its 11 videos with audio), in `repeat`
    interleaved rounds so that load from other processes hits all alike; the fastest round counts."""
    no_split = replace(OPTIONS, split_input_into_scenes=False)
    videos, audio_videos = source_videos(data_dir), source_videos(audio_dir)
    rounds = []
    for i in range(repeat):
        print(f"round {i + 1} of {repeat}: prepare and ffmpeg CLI...", flush=True)
        run = {"prepare_split": measure_prepare(data_dir, runs / "prepare_split", OPTIONS),
               "prepare_no_split": measure_prepare(data_dir, runs / "prepare_no_split", no_split)}
        # Like for like: the CLI writes WAVs only if prepare made audio (it needs every video to have it).
        prepare_audio = run["prepare_no_split"]["audio"]["enabled"]
        run["ffmpeg_cli_s"] = time_ffmpeg_cli(videos, runs / "ffmpeg_cli", prepare_audio)
        run["ffmpeg_cli_all_wav_s"] = time_ffmpeg_cli(videos, runs / "ffmpeg_cli_wav", True)
        run["audio_prepare"] = measure_prepare(audio_dir, runs / "prepare_audio", no_split)
        run["audio_ffmpeg_cli_s"] = time_ffmpeg_cli(audio_videos, runs / "ffmpeg_cli_audio", True)
        rounds.append(run)
    # The last round's outputs: videos of the like-for-like run, videos and WAVs of the audio subset.
    checks = {"all": compare_outputs(runs / "prepare_no_split", runs / "ffmpeg_cli"),
              "audio": compare_outputs(runs / "prepare_audio", runs / "ffmpeg_cli_audio")}
    merged = {key: fastest([r[key] for r in rounds]) for key in PREPARE_RUNS}
    merged.update({key: min(r[key] for r in rounds) for key in CLI_RUNS})
    merged["rounds_s"] = {key: [round(r[key]["wall_s"] if key in PREPARE_RUNS else r[key], 2) for r in rounds]
                          for key in (*PREPARE_RUNS, *CLI_RUNS)}
    merged["audio_videos"] = len(audio_videos)
    merged["output_checks"] = checks
    return merged


def summary_lines(results: dict) -> list[str]:
    """The final plain-text report."""
    short, scenes = results["short"], results["scene_detection"]
    split, no_split, audio = (short[key] for key in PREPARE_RUNS)
    ffmpeg_s, audio_ffmpeg_s = short["ffmpeg_cli_s"], short["audio_ffmpeg_cli_s"]
    ours_s, cli_s = scenes["ours_sequential_s"], scenes["cli_sequential_s"]
    rounds = " / ".join(f"{t:.1f}" for t in short["rounds_s"]["prepare_no_split"])
    audio_note = f"audio {'on' if no_split['audio']['enabled'] else 'off'}: {no_split['audio']['reason']}"
    if scenes["cuts_match"]:
        starts = "/".join(f"{start:g}" for start in scenes["expected_starts_s"])
        cuts = f"both find {len(scenes['expected_starts_s'])} scenes at {starts} s in each video"
    elif scenes["cuts_within_a_frame"]:
        cuts = f"within one frame of the CLI's: ours {scenes['ours_starts_s']}, CLI {scenes['cli_starts_s']}"
    else:
        cuts = f"DIFFER: ours {scenes['ours_starts_s']}, CLI {scenes['cli_starts_s']}"
    checks = short["output_checks"]
    videos_checked = "same" if checks["all"]["videos_match"] and checks["audio"]["videos_match"] else \
        f"DIFFER {checks['all']['videos_differ'] + checks['audio']['videos_differ']}"
    audio_checked = (f"same length, channels and rate, samples within {checks['audio']['audio_max_deviation']:.1g} "
                     "at equal peak" if checks["audio"]["audio_match"] else f"DIFFER {checks['audio']['audio_differ']}")
    peak_tree = max(run["peak_rss_tree_mb"] for run in (split, no_split, audio))
    peak_process = max(run["peak_rss_process_mb"] for run in (split, no_split, audio))
    lines = [
        f"load average (1 min): {results['load_before']:.1f} before, {results['load_after']:.1f} after; "
        f"short-set times are the best of {results['repeat']} interleaved rounds",
        f"prepare (with scene split)          {split['wall_s']:6.1f} s   {split['samples']} samples",
        f"prepare (no split, like-for-like)   {no_split['wall_s']:6.1f} s   {no_split['samples']} samples "
        f"(rounds {rounds} s); {audio_note}",
        f"ffmpeg CLI, one process per clip    {ffmpeg_s:6.1f} s   ratio {no_split['wall_s'] / ffmpeg_s:.2f} "
        f"(target <= {PREPARE_RATIO_TARGET})"
        + ("" if no_split["audio"]["enabled"] else "   [video only, like prepare's output]"),
        f"  same, plus a WAV per clip with audio {short['ffmpeg_cli_all_wav_s']:.1f} s",
        f"audio subset ({short['audio_videos']} videos, mp4 + wav): prepare {audio['wall_s']:.1f} s, "
        f"ffmpeg CLI {audio_ffmpeg_s:.1f} s   ratio {audio['wall_s'] / audio_ffmpeg_s:.2f}",
        f"outputs against the CLI's: videos (size, frames) {videos_checked}; "
        f"audio ({checks['audio']['audio_compared']} WAVs) {audio_checked}",
        f"scene detection: ours {ours_s:.1f} s, scenedetect CLI {cli_s:.1f} s   ratio {ours_s / cli_s:.2f} "
        f"(target <= {SCENES_RATIO_TARGET})",
        f"  both videos at once: our pool of 2 {scenes['ours_pool_s']:.1f} s, prepare's stage "
        f"{split['stages_s'].get('detecting scenes', float('nan')):.1f} s; "
        f"CLI start-up {scenes['cli_startup_s']:.1f} s a run",
        f"  cuts: {cuts}",
        f"peak RSS prepare: tree {peak_tree:.0f} MB, largest process {peak_process:.0f} MB "
        f"(target <= {RSS_TARGET_MB} MB)",
        "stages of the split run: " + ", ".join(f"{k} {v:.1f} s" for k, v in split["stages_s"].items()),
    ]
    for label, run in results.get("ten_minutes", {}).items():
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in run["stages_s"].items())
        lines.append(f"10-min 720p ({label}): wall {run['wall_s']:.0f} s, peak RSS tree "
                     f"{run['peak_rss_tree_mb']:.0f} MB, largest process "
                     f"{run['peak_rss_process_mb']:.0f} MB, {run['samples']} sample(s); {stages}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output"), help="work folder (%(default)s)")
    parser.add_argument("--skip-long", action="store_true", help="skip the 10-minute video")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the short measurements (default: 3)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measured prepare run
    args = parser.parse_args()
    if args.child:
        child_prepare(json.loads(args.child))
        return

    out = args.out.resolve()
    env = environment()
    print("\n".join(f"{key:12s} {value}" for key, value in env.items()), flush=True)
    data_dir, audio_dir, runs = out / "data", out / "data_audio", out / "runs"
    print("generating the dataset (not timed)...", flush=True)
    generate_dataset(data_dir, audio_dir)
    results: dict = {"environment": env, "options": asdict(OPTIONS), "repeat": args.repeat,
                     "load_before": os.getloadavg()[0]}
    results["short"] = measure_short_dataset(data_dir, audio_dir, runs, args.repeat)
    print("scene detection...", flush=True)
    long_videos = [v for v in source_videos(data_dir) if v.name.startswith("scenes_")]
    results["scene_detection"] = compare_scene_detection(long_videos, runs / "scenedetect_cli", args.repeat)
    if not args.skip_long:
        ten_minutes = out / "ten_minutes" / "testsrc2_720p_10min.mp4"
        print("10-minute video (generated once, then cached)...", flush=True)
        generate_ten_minute_video(ten_minutes)
        auto_scale = replace(OPTIONS, auto_scale_input=True, split_input_into_scenes=False)
        folder = ten_minutes.parent
        results["ten_minutes"] = {
            "scene split": measure_prepare(folder, runs / "ten_minutes_split", OPTIONS),
            "auto-scale, no split": measure_prepare(folder, runs / "ten_minutes_auto", auto_scale),
        }
    results["load_after"] = os.getloadavg()[0]

    lines = summary_lines(results)
    results["summary"] = lines
    (out / "bench_prepare.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print("\n" + "\n".join(lines) + f"\n\nfull results: {out / 'bench_prepare.json'}")


if __name__ == "__main__":
    main()
