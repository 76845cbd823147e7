"""Waveform → log-mel spectrogram, the input of LTX-2's audio VAE, computed in torch.

torchaudio cannot be used with this torch build, so this reproduces ltx-core's `AudioProcessor`
(`torchaudio.transforms.MelSpectrogram` with the values below, then `log(clamp(x, 1e-5))`) from `torch.stft`
and librosa's Slaney mel filterbank. Only the filterbank comes from librosa (it is a constant matrix); the
transform itself runs in torch, so it works on the GPU and in batches.
"""

from __future__ import annotations

import functools

import torch

MEL_SAMPLE_RATE_HZ = 16_000
MEL_N_FFT = 1024
MEL_WIN_LENGTH = 1024
MEL_HOP_LENGTH = 160  # 100 mel frames per second
MEL_BINS = 64
MEL_F_MAX_HZ = 8_000.0
LOG_FLOOR = 1e-5


@functools.lru_cache(maxsize=4)
def _mel_filterbank(device_type: str) -> torch.Tensor:
    import librosa

    bank = librosa.filters.mel(sr=MEL_SAMPLE_RATE_HZ, n_fft=MEL_N_FFT, n_mels=MEL_BINS, fmin=0.0,
                               fmax=MEL_F_MAX_HZ, htk=False, norm="slaney")
    return torch.from_numpy(bank).to(device_type)  # [mel bins, n_fft // 2 + 1]


def waveform_to_log_mel(waveform: torch.Tensor) -> torch.Tensor:
    """[B, channels, samples] at 16 kHz → [B, channels, frames, 64] log-magnitude mel, frames = samples // 160 + 1."""
    batch, channels, samples = waveform.shape
    flat = waveform.reshape(batch * channels, samples).float()
    window = torch.hann_window(MEL_WIN_LENGTH, device=flat.device)  # periodic, as torchaudio's default
    spectrum = torch.stft(flat, n_fft=MEL_N_FFT, hop_length=MEL_HOP_LENGTH, win_length=MEL_WIN_LENGTH,
                          window=window, center=True, pad_mode="reflect", return_complex=True)
    magnitude = spectrum.abs()  # power 1.0
    mel = torch.matmul(_mel_filterbank(flat.device.type).to(flat.device), magnitude)  # [B*C, bins, frames]
    log_mel = torch.log(torch.clamp(mel, min=LOG_FLOOR))
    return log_mel.reshape(batch, channels, MEL_BINS, -1).transpose(2, 3)
