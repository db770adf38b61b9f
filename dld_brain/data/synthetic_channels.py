"""Synthetic noises and impulse responses for channel augmentation, made locally (nothing is downloaded).

SpeechBrain's :class:`~speechbrain.augment.time_domain.AddNoise` and
:class:`~speechbrain.augment.time_domain.AddReverb` read their noises / impulse responses from an extended
CSV manifest (``ID, duration, wav, wav_format, wav_opts``). :func:`write_channel_manifests` writes three
such manifests once, from a seed, under a prep folder:

* ``noise.csv``: coloured noises (white, pink, brown, blue, violet; :func:`coloured_noise`), mains hum with
  harmonics (:func:`hum_noise`) and a speech-shaped, syllable-rate modulated noise (:func:`babble_like_noise`);
* ``rooms.csv``: room impulse responses: a direct path followed by exponentially decaying Gaussian noise
  (:func:`synthetic_room_ir`; RT60 and direct-to-reverberant ratio drawn per response);
* ``mics.csv``: short linear-phase FIR "microphone / line" responses: band limits and a smooth random
  spectral tilt with a few resonances (:func:`synthetic_mic_ir`), used through ``AddReverb`` as well
  (``AddReverb`` aligns on the response's peak, so the centred FIR does not shift the signal).

Everything is float32 at the corpus sample rate, driven by one ``torch.Generator``, so the same seed gives
the same files. The files are written as 16-bit PCM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import soundfile
import torch

from dld_brain.data.manifest import PrepMarker

CHANNEL_PREP_VERSION = 1
#: spectral exponents of the coloured noises: power ~ 1 / f**exponent
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0, "blue": -1.0, "violet": -2.0}


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand(1, generator=gen).item())


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).mean().sqrt().clamp(min=1e-12)


def coloured_noise(num_samples: int, exponent: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gaussian noise whose power spectrum falls as ``1 / f**exponent`` (0 white, 1 pink, 2 brown, -1 blue),
    unit RMS, ``[num_samples]`` float32. The DC bin is zeroed."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    white = torch.randn(num_samples, generator=generator)
    spectrum = torch.fft.rfft(white)
    freqs = torch.arange(spectrum.numel(), dtype=torch.float32)
    freqs[0] = 1.0
    spectrum = spectrum / freqs.pow(exponent / 2.0)
    spectrum[0] = 0
    return _unit_rms(torch.fft.irfft(spectrum, n=num_samples)).float()


def hum_noise(num_samples: int, sample_rate: int, base_hz: float = 50.0,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mains hum: ``base_hz`` and its harmonics up to 1 kHz with random amplitudes (1/k on average) and
    phases, plus a little white noise; unit RMS."""
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    hum = torch.zeros(num_samples, dtype=torch.float64)
    for k in range(1, int(1000 // base_hz) + 1):
        amp = torch.rand(1, generator=generator).item() / k
        phase = 2 * math.pi * torch.rand(1, generator=generator).item()
        hum += amp * torch.sin(2 * math.pi * base_hz * k * t + phase)
    hum = _unit_rms(hum.float())
    return _unit_rms(hum + 0.05 * torch.randn(num_samples, generator=generator))


def babble_like_noise(num_samples: int, sample_rate: int,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Speech-shaped noise (pink, band-limited to about 100-4000 Hz) whose envelope is modulated at a
    syllable rate (3-6 Hz), a crude stand-in for distant babble; unit RMS."""
    noise = coloured_noise(num_samples, 1.0, generator)
    spectrum = torch.fft.rfft(noise)
    freqs = torch.fft.rfftfreq(num_samples, 1.0 / sample_rate)
    spectrum[(freqs < 100) | (freqs > 4000)] = 0
    noise = torch.fft.irfft(spectrum, n=num_samples)
    t = torch.arange(num_samples, dtype=torch.float32) / sample_rate
    rate = _uniform(generator, 3.0, 6.0)
    envelope = 0.6 + 0.4 * torch.sin(2 * math.pi * rate * t + _uniform(generator, 0, 2 * math.pi))
    return _unit_rms(noise * envelope).float()


def synthetic_room_ir(sample_rate: int, rt60: float, drr_db: float = 3.0,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A room impulse response: a unit direct path at sample 0, then, after a 1-5 ms gap, Gaussian noise
    under the envelope ``exp(-6.9 t / rt60)`` (60 dB down at ``rt60`` s), scaled so that the direct energy
    is ``drr_db`` above the reverberant energy. The direct path stays the largest sample (``AddReverb``
    aligns on it). Length ``rt60`` s; float32."""
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    length = max(int(rt60 * sample_rate), 16)
    gap = int(_uniform(generator, 0.001, 0.005) * sample_rate)
    t = torch.arange(length, dtype=torch.float32) / sample_rate
    tail = torch.randn(length, generator=generator) * torch.exp(-6.9 * t / rt60)
    tail[: gap + 1] = 0
    energy = tail.pow(2).sum().clamp(min=1e-12)
    tail = tail * torch.sqrt(10 ** (-drr_db / 10) / energy)
    peak = tail.abs().max()
    if peak >= 0.9:  # keep the direct path the maximum
        tail = tail * (0.9 / peak)
    tail[0] = 1.0
    return tail


def synthetic_mic_ir(sample_rate: int, num_taps: int = 511,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A microphone / line response as a linear-phase FIR of ``num_taps`` taps (odd), peak at the centre:
    a high-pass edge (60-400 Hz) and a low-pass edge (2.8-7.5 kHz, never above Nyquist), a random spectral
    tilt (-6..+6 dB per octave around 1 kHz, flat below 250 Hz) and 1-3 resonances or dips (+-8 dB). Unit peak; float32."""
    if num_taps % 2 == 0:
        raise ValueError(f"num_taps must be odd, got {num_taps}")
    n_fft = 4096
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate).double()
    low = _uniform(generator, 60.0, 400.0)
    high = min(_uniform(generator, 2800.0, 7500.0), 0.95 * sample_rate / 2)
    gain_db = _uniform(generator, -6.0, 6.0) * torch.log2(freqs.clamp(min=250.0) / 1000.0)  # flat below 250 Hz
    for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
        centre = _uniform(generator, math.log(300.0), math.log(min(6000.0, high)))
        width = _uniform(generator, 0.15, 0.6)
        gain_db += _uniform(generator, -8.0, 8.0) * torch.exp(-0.5 * ((torch.log(freqs.clamp(min=1.0)) - centre)
                                                                     / width) ** 2)
    magnitude = 10 ** (gain_db / 20)
    magnitude *= 1 / (1 + (low / freqs.clamp(min=1e-3)) ** 4)  # 4th-order-like edges
    magnitude *= 1 / (1 + (freqs / high) ** 8)
    impulse = torch.fft.irfft(magnitude.to(torch.complex128), n=n_fft)
    half = num_taps // 2
    fir = torch.cat([impulse[-half:], impulse[: half + 1]]) * torch.hann_window(num_taps + 2, periodic=False,
                                                                                 dtype=torch.float64)[1:-1]
    return (fir / fir.abs().max()).float()


def _write(path: Path, audio: torch.Tensor, sample_rate: int) -> dict:
    peak = audio.abs().max().clamp(min=1e-12)
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    soundfile.write(str(path), audio.numpy(), sample_rate, subtype="PCM_16")
    return {"ID": path.stem, "duration": f"{audio.numel() / sample_rate:.4f}", "wav": str(path.resolve()),
            "wav_format": "wav", "wav_opts": ""}


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = ["ID", "duration", "wav", "wav_format", "wav_opts"]
    lines = [",".join(keys)] + [",".join(row[k] for k in keys) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def write_channel_manifests(folder: str | Path, sample_rate: int = 16000, seed: int = 4321,
                            noise_seconds: float = 10.0, noises_per_kind: int = 2, num_rooms: int = 24,
                            rt60_range: tuple[float, float] = (0.1, 0.8), num_mics: int = 24) -> dict[str, Path]:
    """Write ``noise.csv``, ``rooms.csv`` and ``mics.csv`` (SpeechBrain extended CSV) and their wavs under
    ``folder``; skipped when a finished write with the same options is there. Returns ``{name: csv path}``.

    ``noise_seconds`` should exceed the longest (speed-perturbed) training utterance: ``AddNoise`` pads a
    shorter noise with zeros.
    """
    folder = Path(folder)
    csvs = {name: folder / f"{name}.csv" for name in ("noise", "rooms", "mics")}
    options = dict(version=CHANNEL_PREP_VERSION, sample_rate=sample_rate, seed=seed, noise_seconds=noise_seconds,
                   noises_per_kind=noises_per_kind, num_rooms=num_rooms, rt60_range=list(rt60_range),
                   num_mics=num_mics)
    marker = PrepMarker(folder, "channels", options)
    if marker.done(list(csvs.values())):
        return csvs
    marker.path.unlink(missing_ok=True)
    gen = _generator(seed)
    wavs = folder / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    n = int(noise_seconds * sample_rate)
    noise_rows = []
    for i in range(noises_per_kind):
        for name, exponent in NOISE_COLOURS.items():
            noise_rows.append(_write(wavs / f"noise_{name}_{i}.wav", 0.25 * coloured_noise(n, exponent, gen),
                                     sample_rate))
        base = 50.0 if i % 2 == 0 else 60.0
        noise_rows.append(_write(wavs / f"noise_hum{int(base)}_{i}.wav",
                                 0.25 * hum_noise(n, sample_rate, base, gen), sample_rate))
        noise_rows.append(_write(wavs / f"noise_babble_{i}.wav", 0.25 * babble_like_noise(n, sample_rate, gen),
                                 sample_rate))
    room_rows = []
    for i in range(num_rooms):
        rt60 = _uniform(gen, *rt60_range)
        drr = _uniform(gen, -3.0, 9.0)
        room_rows.append(_write(wavs / f"room_{i:02d}.wav", synthetic_room_ir(sample_rate, rt60, drr, gen),
                                sample_rate))
    mic_rows = [_write(wavs / f"mic_{i:02d}.wav", synthetic_mic_ir(sample_rate, generator=gen), sample_rate)
                for i in range(num_mics)]
    for name, rows in (("noise", noise_rows), ("rooms", room_rows), ("mics", mic_rows)):
        _write_csv(csvs[name], rows)
    marker.mark()
    return csvs
