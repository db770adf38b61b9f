"""SpeechBrain's ``Fbank`` + ``InputNormalization`` in NumPy (no torch), for the edge runner.

The STFT window and the mel matrix are not recomputed here: :func:`dld_brain.export.export_edge` saves the
trained model's own (``features.npz``), so the only arithmetic is framing, FFT, mel product, dB and
normalisation; ``tests/test_edge.py`` checks the result equals SpeechBrain's on real audio.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


class NumpyFbank:
    """Log-mel filterbanks as ``speechbrain.lobes.features.Fbank`` computes them (no deltas/context).

    ``window``: the (n_fft,) analysis window as ``torch.stft`` applies it (the win_length window centred in
    n_fft); ``fbank_matrix``: (n_fft // 2 + 1, n_mels); ``settings``: ``hop_length`` (samples), ``n_fft``,
    ``multiplier`` (10 for power spectra), ``amin``, ``db_multiplier``, ``top_db``, ``log_mel``.
    """

    def __init__(self, window: np.ndarray, fbank_matrix: np.ndarray, settings: Mapping):
        self.window = np.asarray(window, dtype=np.float64)
        self.fbank_matrix = np.asarray(fbank_matrix, dtype=np.float64)
        self.n_fft = int(settings["n_fft"])
        self.hop = int(settings["hop_length"])
        self.multiplier = float(settings["multiplier"])
        self.amin = float(settings["amin"])
        self.db_multiplier = float(settings["db_multiplier"])
        self.top_db = float(settings["top_db"])
        self.log_mel = bool(settings["log_mel"])

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """(samples,) mono waveform -> (frames, n_mels) float32 filterbanks (centred frames, zero padding)."""
        pad = self.n_fft // 2
        x = np.pad(np.asarray(wav, dtype=np.float64), (pad, pad), mode="constant")
        frames = 1 + (x.shape[0] - self.n_fft) // self.hop
        index = np.arange(self.n_fft)[None, :] + self.hop * np.arange(frames)[:, None]
        spec = np.fft.rfft(x[index] * self.window, n=self.n_fft, axis=-1)
        power = spec.real ** 2 + spec.imag ** 2
        fbanks = power @ self.fbank_matrix
        if self.log_mel:
            fbanks = self.multiplier * np.log10(np.maximum(fbanks, self.amin))
            fbanks -= self.multiplier * self.db_multiplier
            fbanks = np.maximum(fbanks, fbanks.max() - self.top_db)
        return fbanks.astype(np.float32)


def normalize(feats: np.ndarray, norm: Mapping) -> np.ndarray:
    """``InputNormalization`` of one utterance (frames, n_mels): ``sentence`` (its own mean/std over time)
    or ``global`` (the trained statistics); ``norm`` holds ``norm_type``, ``std_norm``, ``epsilon`` and, for
    ``global``, ``glob_mean`` / ``glob_std``."""
    x = np.asarray(feats, dtype=np.float64)
    kind = norm["norm_type"]
    eps = float(norm["epsilon"])
    if kind == "sentence":
        mean = x.mean(axis=0)
        std = np.sqrt(np.square(x - mean).mean(axis=0))
    elif kind == "global":
        mean = np.asarray(norm["glob_mean"], dtype=np.float64)
        std = np.asarray(norm["glob_std"], dtype=np.float64)
    else:
        raise ValueError(f"normalisation {kind!r} is not supported on the edge (sentence or global)")
    if not norm.get("std_norm", True):
        std = np.ones_like(mean)
    return ((x - mean) / np.maximum(std, eps)).astype(np.float32)
