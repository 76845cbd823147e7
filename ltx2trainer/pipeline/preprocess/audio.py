"""Audio for one clip: decoded, made stereo, resampled, matched to the clip's duration, peak-normalised.

Decoding and resampling are FFmpeg's (swresample through PyAV); the pitch-preserving time stretch is
librosa's phase vocoder. Everything is stored at one fixed rate, `AUDIO_SAMPLE_RATE_HZ`, the rate LTX-2's
audio VAE takes, so the encode stage never resamples again.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import soundfile

AUDIO_SAMPLE_RATE_HZ = 16_000  # LTX-2's audio VAE works on 16 kHz log-mel spectrograms
TARGET_PEAK = 0.999
# Tracks quieter than -60 dBFS are left alone: amplifying them to full scale would only amplify noise.
SILENCE_PEAK = 10 ** (-60 / 20)
# Durations within 1 ms are the same: trim/pad rather than stretch by a vanishing factor.
STRETCH_TOLERANCE_S = 0.001
# The phase vocoder holds the whole STFT of its input; longer windows are stretched in chunks of this much
# source audio so that memory stays bounded (a 10-minute window re-timed whole would need ~1 GB).
STRETCH_CHUNK_S = 30.0
CHUNK_FADE_S = 0.005  # short fades where stretched chunks meet, so the seams do not click


class AudioCollector:
    """Collects an audio stream's samples over a time window [start_s, start_s + duration_s).

    Feed it the stream's decoded frames in order with `push`; `finish` returns float32 stereo
    `[2, samples]` at `AUDIO_SAMPLE_RATE_HZ`: mono is duplicated to both sides, more than two channels are
    downmixed by swresample's standard matrix. Stretches the track does not cover are silence, so audio stays
    in sync with the video even when the track starts late or ends early.
    """

    def __init__(self, stream: av.audio.stream.AudioStream, start_s: float, duration_s: float) -> None:
        channels = stream.codec_context.channels or 2
        # swresample's mono->stereo upmix lowers the level by 3 dB; we duplicate mono ourselves instead.
        self.mono = channels == 1
        self.resampler = av.AudioResampler(
            format="fltp", layout="mono" if self.mono else "stereo", rate=AUDIO_SAMPLE_RATE_HZ
        )
        self.start_s = start_s
        self.samples = np.zeros((1 if self.mono else 2, round(duration_s * AUDIO_SAMPLE_RATE_HZ)), np.float32)
        self.position: int | None = None  # where the next resampled sample goes in `samples`

    @property
    def done(self) -> bool:
        return self.position is not None and self.position >= self.samples.shape[1]

    def push(self, frame: av.AudioFrame | None) -> None:
        """Add one decoded frame (None flushes the resampler)."""
        if frame is not None and self.position is None:
            if frame.time is None:
                self.position = 0
            else:
                self.position = round((frame.time - self.start_s) * AUDIO_SAMPLE_RATE_HZ)
        for resampled in self.resampler.resample(frame):
            self._place(resampled.to_ndarray())

    def _place(self, block: np.ndarray) -> None:
        if self.position is None:
            return
        begin, end = self.position, self.position + block.shape[1]
        self.position = end
        lo, hi = max(begin, 0), min(end, self.samples.shape[1])
        if hi > lo:
            self.samples[:, lo:hi] = block[:, lo - begin : hi - begin]

    def finish(self) -> np.ndarray:
        self.push(None)
        return np.repeat(self.samples, 2, axis=0) if self.mono else self.samples


def match_duration(samples: np.ndarray, target_samples: int, *, preserve_pitch: bool) -> np.ndarray:
    """Make `samples` ([2, n]) exactly `target_samples` long.

    With `preserve_pitch`, a phase-vocoder time stretch (tempo changes, pitch does not); otherwise the end
    is trimmed or padded with silence. Lengths within `STRETCH_TOLERANCE_S` are trimmed/padded either way.
    """
    current = samples.shape[1]
    tolerance = round(STRETCH_TOLERANCE_S * AUDIO_SAMPLE_RATE_HZ)
    if preserve_pitch and current > 0 and target_samples > 0 and abs(current - target_samples) > tolerance:
        samples = _time_stretch(samples, rate=current / target_samples)
    if samples.shape[1] >= target_samples:
        return np.ascontiguousarray(samples[:, :target_samples], dtype=np.float32)
    padded = np.zeros((samples.shape[0], target_samples), np.float32)
    padded[:, : samples.shape[1]] = samples
    return padded


def _time_stretch(samples: np.ndarray, rate: float) -> np.ndarray:
    """librosa's phase vocoder (rate > 1 shortens), chunked beyond `STRETCH_CHUNK_S` of input."""
    import librosa  # slow to import; only re-timed clips need it

    chunk = round(STRETCH_CHUNK_S * AUDIO_SAMPLE_RATE_HZ)
    if samples.shape[1] <= chunk * 3 // 2:
        return librosa.effects.time_stretch(samples, rate=rate)
    fade = round(CHUNK_FADE_S * AUDIO_SAMPLE_RATE_HZ)
    pieces = []
    for start in range(0, samples.shape[1], chunk):
        piece = librosa.effects.time_stretch(np.ascontiguousarray(samples[:, start : start + chunk]), rate=rate)
        ramp = np.linspace(0.0, 1.0, min(fade, piece.shape[1] // 2), dtype=np.float32)
        if len(ramp):
            piece[:, : len(ramp)] *= ramp
            piece[:, piece.shape[1] - len(ramp) :] *= ramp[::-1]
        pieces.append(piece)
    return np.concatenate(pieces, axis=1)


def normalize_peak(samples: np.ndarray) -> np.ndarray:
    """Scale so the absolute peak is `TARGET_PEAK`; near-silent audio (below `SILENCE_PEAK`) is unchanged."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak < SILENCE_PEAK:
        return samples
    return (samples * (TARGET_PEAK / peak)).astype(np.float32, copy=False)


def peak_of(samples: np.ndarray) -> float:
    return float(np.max(np.abs(samples))) if samples.size else 0.0


def write_wav(path: Path, samples: np.ndarray) -> None:
    """Write [2, n] float samples as a 32-bit float WAV, atomically (temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.wav")
    try:
        soundfile.write(tmp, samples.T, AUDIO_SAMPLE_RATE_HZ, subtype="FLOAT", format="WAV")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
