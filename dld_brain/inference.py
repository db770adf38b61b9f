"""Using a trained dynamic-depth model at a depth chosen per call, or under a budget: transcription
(:class:`DynamicDepthASR`) and utterance classification / intents (:class:`DynamicDepthClassifier`).

>>> asr = DynamicDepthASR.from_hparams(source="results/fsdd/dld/inference")  # doctest: +SKIP
>>> asr.transcribe_file("digits.wav", depth=3)                              # doctest: +SKIP
>>> words, tokens = asr.transcribe_batch(wavs, wav_lens, depth=2)  # as EncoderASR  # doctest: +SKIP
>>> asr.set_decoder(beam_size=20, lexicon="digits.lex")  # see dld_brain.decoding  # doctest: +SKIP
>>> asr.profile()                      # measure latency per depth once     # doctest: +SKIP
>>> asr.transcribe_file("digits.wav", max_latency_ms=20)                    # doctest: +SKIP
>>> slu = DynamicDepthClassifier.from_hparams(source="results/speech_to_intent/dld/inference")  # doctest: +SKIP
>>> slu.classify_file("order.flac", depth=2)       # -> ("latte", 0.93)     # doctest: +SKIP

A bundle is also a stock SpeechBrain model: ``speechbrain.inference.ASR.EncoderASR.from_hparams(source=...)``
loads it and transcribes at full depth with the bundle's decoder (same words as :class:`DynamicDepthASR`,
which adds depth and budget). Audio goes through SpeechBrain's ``AudioNormalizer`` (any sample rate is
resampled, stereo is averaged); unreadable, too short or silent audio raises
:class:`InferenceInputError` naming the file.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from speechbrain.dataio.preprocess import AudioNormalizer
from speechbrain.inference.interfaces import Pretrained

from dld_brain.decoding import CTCDecoder
from dld_brain.export import INFERENCE_YAML
from dld_brain.gates import DepthError, select_layers
from dld_brain.lobes.conformer import executed_parameters
from dld_brain.safe_files import UntrustedFileError, check_bundle_yaml, name_untrusted_file, weights_only_loading

PROFILE_FILE = "depth_profile.json"


class InferenceInputError(ValueError):
    """Audio that cannot be transcribed; the message names the file and why."""


class UntrustedBundleError(InferenceInputError, UntrustedFileError):
    """A bundle file holding more than tensors and plain types (it is not loaded); the message names it."""


class BudgetError(ValueError):
    """No depth fits the requested budget; the message gives the cheapest option."""


class DynamicDepthModel(Pretrained):
    """What every dynamic-depth interface shares: loading a bundle, depth / layer / budget resolution, the
    latency profile, audio reading with clear errors, and batching of files. Subclasses add the outputs."""

    HPARAMS_NEEDED = ["compute_features", "sample_rate"]
    MODULES_NEEDED = ["model", "normalize"]
    min_seconds = 0.1
    silence_peak = 1e-4

    @classmethod
    def from_hparams(cls, source, hparams_file: str = INFERENCE_YAML, savedir=None, trust_yaml: bool = False,
                     **kwargs):
        """Load a bundle folder (see dld_brain.export); a local ``source`` is used in place. Its YAML may build
        only what dld_brain bundles use (:func:`dld_brain.safe_files.check_bundle_yaml`) unless ``trust_yaml``,
        and its files are read without unpickling anything but tensors and plain types."""
        if savedir is None and Path(source).is_dir():
            savedir = source
        if not trust_yaml:
            try:
                check_bundle_yaml(cls._fetch_yaml(source, hparams_file, savedir))
            except UntrustedFileError as err:
                raise UntrustedBundleError(str(err)) from err
        try:
            with weights_only_loading():  # no file of the bundle is unpickled beyond tensors and plain types
                asr = super().from_hparams(source=str(source), hparams_file=hparams_file, savedir=savedir,
                                           **kwargs)
        except UntrustedFileError as err:
            raise UntrustedBundleError(f"{source}: {name_untrusted_file(source, err)}") from err
        asr.source_dir = Path(savedir) if savedir is not None else None
        asr.mods.eval()
        return asr

    @staticmethod
    def _fetch_yaml(source, hparams_file: str, savedir) -> Path:
        """The bundle's YAML file on this machine (fetched as SpeechBrain fetches it, for a remote source)."""
        local = Path(str(source)) / hparams_file
        if local.is_file():
            return local
        from speechbrain.utils.fetching import fetch

        return Path(fetch(filename=hparams_file, source=source, savedir=savedir, save_filename=None))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.source_dir: Optional[Path] = None
        self._profile: Optional[dict] = None
        if getattr(self.audio_normalizer, "sample_rate", None) != self.hparams.sample_rate:
            # bundles written before the normaliser was part of them: SpeechBrain's default is 16 kHz
            self.audio_normalizer = AudioNormalizer(sample_rate=self.hparams.sample_rate)

    # --------------------------------------------------------------- depth
    @property
    def num_layers(self) -> int:
        """Encoder layers of the full model."""
        return self.mods.model.encoder.num_layers

    def layers_for(self, depth: Optional[int] = None, layers: Optional[Sequence[int]] = None,
                   max_params: Optional[int] = None, max_latency_ms: Optional[float] = None) -> list[int]:
        """Resolve the call's depth options to a layer list (budget options pick the deepest that fits)."""
        if sum(x is not None for x in (depth, layers, max_params, max_latency_ms)) > 1:
            raise DepthError("give only one of depth, layers, max_params, max_latency_ms")
        if max_params is not None or max_latency_ms is not None:
            depth = self.depth_for_budget(max_params=max_params, max_latency_ms=max_latency_ms)
        return select_layers(self.num_layers, depth, layers, self.mods.model.encoder.depth_policy)

    def depth_for_budget(self, max_params: Optional[int] = None, max_latency_ms: Optional[float] = None,
                         profile: Optional[dict] = None) -> int:
        """The deepest depth whose executed encoder parameters / profiled latency fit the budget."""
        rows = (profile or self.load_profile())["depths"] if max_latency_ms is not None else [
            {"depth": d, "encoder_params": executed_parameters(
                self.mods.model, select_layers(self.num_layers, d, policy=self.mods.model.encoder.depth_policy)
            )["encoder"]} for d in range(1, self.num_layers + 1)]
        key, limit = ("latency_ms", max_latency_ms) if max_latency_ms is not None else ("encoder_params", max_params)
        fitting = [r["depth"] for r in rows if r[key] <= limit]
        if not fitting:
            cheapest = min(rows, key=lambda r: r[key])
            raise BudgetError(f"no depth fits {key} <= {limit}: the cheapest, depth {cheapest['depth']}, needs "
                              f"{cheapest[key]}")
        return max(fitting)

    # --------------------------------------------------------------- profile
    def profile(self, seconds: float = 3.0, batch_size: int = 1, repeats: int = 5,
                save: bool = True) -> dict:
        """Measure encoder latency per depth on this machine (``seconds`` of audio); saves
        ``depth_profile.json`` next to the bundle so budget calls can use it later."""
        wavs = torch.randn(batch_size, int(seconds * self.hparams.sample_rate), device=self.device) * 0.1
        lens = torch.ones(batch_size, device=self.device)
        feats = self._features(wavs, lens)
        rows = []
        times = {d: [] for d in range(1, self.num_layers + 1)}
        layer_sets = {d: self.layers_for(depth=d) for d in times}
        with torch.inference_mode():
            for d in times:
                self.mods.model.encode(feats, lens, layers=layer_sets[d])
            for _ in range(repeats):
                for d in times:
                    start = time.perf_counter()
                    self.mods.model.encode(feats, lens, layers=layer_sets[d])
                    if self.device != "cpu" and torch.cuda.is_available():
                        torch.cuda.synchronize()
                    times[d].append((time.perf_counter() - start) * 1000)
        for d, t in times.items():
            rows.append({"depth": d, "latency_ms": round(statistics.median(t), 3),
                         "encoder_params": executed_parameters(self.mods.model, layer_sets[d])["encoder"]})
        self._profile = {"device": str(self.device), "seconds": seconds, "batch_size": batch_size, "depths": rows}
        if save and self.source_dir is not None:
            (self.source_dir / PROFILE_FILE).write_text(json.dumps(self._profile, indent=1))
        return self._profile

    def load_profile(self) -> dict:
        """The latency profile: measured in this session, else read from the bundle's depth_profile.json."""
        if self._profile is not None:
            return self._profile
        path = self.source_dir / PROFILE_FILE if self.source_dir is not None else None
        if path is None or not path.is_file():
            raise BudgetError("max_latency_ms needs a latency profile: call profile() once on this machine")
        self._profile = json.loads(path.read_text())
        return self._profile

    # --------------------------------------------------------------- audio
    def _features(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        feats = self.hparams.compute_features(wavs)
        return self.mods.normalize(feats, wav_lens)

    def _log_probs(self, wavs: torch.Tensor, wav_lens: torch.Tensor, **depth_options) -> torch.Tensor:
        """The model's log-probabilities for a padded batch at the resolved depth (no gradient)."""
        run = self.layers_for(**depth_options)
        wavs, wav_lens = wavs.to(self.device).float(), wav_lens.to(self.device).float()
        with torch.no_grad():
            return self.mods.model(self._features(wavs, wav_lens), wav_lens, layers=run)

    def read_audio(self, path: Union[str, Path]) -> torch.Tensor:
        """Mono waveform at the model's rate (SpeechBrain's ``AudioNormalizer``: resampling, stereo averaged);
        InferenceInputError for unreadable, too short or silent audio."""
        import soundfile

        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
        except Exception as err:
            raise InferenceInputError(f"cannot read audio {path}: {err}") from err
        if data.size == 0:
            raise InferenceInputError(f"audio {path} is empty (0 samples)")
        sig = self.audio_normalizer(torch.from_numpy(data), rate)
        seconds = sig.numel() / self.hparams.sample_rate
        if seconds < self.min_seconds:
            raise InferenceInputError(f"{path} is too short to transcribe ({seconds:.3f} s < {self.min_seconds} s)")
        if sig.abs().max() < self.silence_peak:
            raise InferenceInputError(f"{path} is silent (peak {sig.abs().max():.1e}): nothing to transcribe")
        return sig

    def padded_batches(self, paths: Sequence[Union[str, Path]], batch_size: int):
        """Yield (wavs (B, T), relative lengths (B,)) for consecutive groups of ``batch_size`` files."""
        for i in range(0, len(paths), batch_size):
            sigs = [self.read_audio(p) for p in paths[i:i + batch_size]]
            longest = max(s.numel() for s in sigs)
            batch = torch.zeros(len(sigs), longest)
            for j, s in enumerate(sigs):
                batch[j, : s.numel()] = s
            yield batch, torch.tensor([s.numel() / longest for s in sigs])


class WaveformCTC(torch.nn.Module):
    """Waveforms -> CTC log-probabilities (features, normalisation, model): the ``encoder`` module that
    SpeechBrain's ``EncoderASR`` calls as ``encoder(wavs, wav_lens)``; runs the model's current depth
    (full unless set), or ``layers``."""

    def __init__(self, compute_features: torch.nn.Module, normalize: torch.nn.Module, model: torch.nn.Module):
        super().__init__()
        self.compute_features = compute_features
        self.normalize = normalize
        self.model = model

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor,
                layers: Optional[Sequence[int]] = None) -> torch.Tensor:
        feats = self.normalize(self.compute_features(wavs), wav_lens)
        return self.model(feats, wav_lens, layers=layers)


class DynamicDepthASR(DynamicDepthModel):
    """A trained conformer CTC model whose depth is chosen per call (``depth``, ``layers``) or by budget
    (``max_params``, ``max_latency_ms`` with a profile from :meth:`profile`); decodes with the bundle's
    decoder (greedy, beam search, lexicon, LM: :mod:`dld_brain.decoding`), changeable with
    :meth:`set_decoder` or per call (``decoder=``)."""

    HPARAMS_NEEDED = ["compute_features", "tokenizer", "blank_index", "sample_rate"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer = self.hparams.tokenizer
        # bundles written before decoding was configurable have no decoder: greedy, as they were
        self.decoder: CTCDecoder = getattr(self.hparams, "decoder", None) or CTCDecoder(
            self.tokenizer, blank_index=self.hparams.blank_index, beam_size=0)

    def set_decoder(self, **changes) -> CTCDecoder:
        """Replace the decoder with the current one's settings updated by ``changes`` (``beam_size``,
        ``lexicon``, ``lm``, ``lm_weight``, ``word_score``; ``beam_size=0`` = greedy, which drops lexicon and
        LM unless given). Returns the new decoder; DecoderConfigError for an unusable setting."""
        self.decoder = self.make_decoder(**changes)
        return self.decoder

    def make_decoder(self, **changes) -> CTCDecoder:
        """A decoder with the current one's settings updated by ``changes`` (see :meth:`set_decoder`)."""
        old = self.decoder
        settings = {"beam_size": old.beam_size, "lexicon": old.lexicon, "lm": old.lm,
                    "lm_weight": old.lm_weight, "word_score": old.word_score}
        if changes.get("beam_size") == 0:
            settings.update(lexicon=None, lm=None)
        settings.update(changes)
        decoder = CTCDecoder(self.tokenizer, blank_index=self.hparams.blank_index, **settings)
        if not decoder.is_greedy:
            decoder._search = decoder._build()  # errors (missing file, bad lexicon) now, not at the first file
        return decoder

    def transcribe_batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor, depth: Optional[int] = None,
                         layers: Optional[Sequence[int]] = None, max_params: Optional[int] = None,
                         max_latency_ms: Optional[float] = None,
                         decoder: Optional[CTCDecoder] = None) -> tuple[list[str], list[list[int]]]:
        """(predicted words, predicted token ids) of a padded batch (B, T) at ``sample_rate`` with relative
        lengths, as SpeechBrain's ``EncoderASR.transcribe_batch`` returns them."""
        log_probs = self._log_probs(wavs, wav_lens, depth=depth, layers=layers, max_params=max_params,
                                    max_latency_ms=max_latency_ms)
        return (decoder or self.decoder).decode(log_probs, wav_lens)

    def transcribe_file(self, path: Union[str, Path], **options) -> str:
        """Transcript of one audio file (any format soundfile reads, any rate, mono or stereo); ``options``:
        the depth options of :meth:`layers_for` and ``decoder``."""
        sig = self.read_audio(path)
        return self.transcribe_batch(sig.unsqueeze(0), torch.ones(1), **options)[0][0]

    def transcribe_files(self, paths: Sequence[Union[str, Path]], batch_size: int = 8,
                         **options) -> list[str]:
        """Transcripts of several files, batched (padding handled with relative lengths)."""
        out = []
        for batch, lens in self.padded_batches(paths, batch_size):
            out += self.transcribe_batch(batch, lens, **options)[0]
        return out


class DynamicDepthClassifier(DynamicDepthModel):
    """A trained conformer utterance classifier (spoken intents) whose depth is chosen per call or by
    budget, exactly as for :class:`DynamicDepthASR`; outputs (label, probability) pairs."""

    HPARAMS_NEEDED = ["compute_features", "label_encoder", "sample_rate"]

    @classmethod
    def from_hparams(cls, source, hparams_file: str = INFERENCE_YAML, savedir=None, **kwargs):
        """Load a classifier bundle; its label encoder must have one label per model output."""
        slu = super().from_hparams(source, hparams_file=hparams_file, savedir=savedir, **kwargs)
        found, expected = len(slu.hparams.label_encoder), slu.mods.model.num_classes
        if found != expected:
            raise InferenceInputError(
                f"{source}: the label encoder (label_encoder.ckpt) has {found} labels but the model has {expected} "
                "outputs: copy the training run's label encoder into the bundle (or re-export it)")
        return slu

    @property
    def labels(self) -> list[str]:
        """Class names in index order."""
        encoder = self.hparams.label_encoder
        return [str(encoder.ind2lab[i]) for i in range(len(encoder))]

    def classify_batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor, depth: Optional[int] = None,
                       layers: Optional[Sequence[int]] = None, max_params: Optional[int] = None,
                       max_latency_ms: Optional[float] = None) -> tuple[list[str], torch.Tensor]:
        """Predicted labels of a padded batch and the class probabilities (B, num_classes)."""
        probs = self._log_probs(wavs, wav_lens, depth=depth, layers=layers, max_params=max_params,
                                max_latency_ms=max_latency_ms).exp()
        names = self.labels
        return [names[int(i)] for i in probs.argmax(dim=-1)], probs

    def classify_file(self, path: Union[str, Path], **depth_options) -> tuple[str, float]:
        """(label, probability) of one audio file (any format soundfile reads, any rate, mono or stereo)."""
        sig = self.read_audio(path)
        labels, probs = self.classify_batch(sig.unsqueeze(0), torch.ones(1), **depth_options)
        return labels[0], float(probs[0].max())

    def classify_files(self, paths: Sequence[Union[str, Path]], batch_size: int = 8,
                       **depth_options) -> list[tuple[str, float]]:
        """(label, probability) of several files, batched."""
        out = []
        for batch, lens in self.padded_batches(paths, batch_size):
            labels, probs = self.classify_batch(batch, lens, **depth_options)
            out += [(label, float(p.max())) for label, p in zip(labels, probs)]
        return out


def load_bundle(source: Union[str, Path], **kwargs) -> DynamicDepthModel:
    """Load a local bundle with the interface its ``inference.yaml`` was written for: a classifier bundle
    (with ``label_encoder``) as :class:`DynamicDepthClassifier`, otherwise :class:`DynamicDepthASR`."""
    yaml_file = Path(source) / INFERENCE_YAML
    if not yaml_file.is_file():
        raise InferenceInputError(f"{source} is not an inference bundle (no {INFERENCE_YAML}): point at "
                                  "<run output folder>/inference")
    is_classifier = any(line.startswith("label_encoder:") for line in yaml_file.read_text().splitlines())
    cls = DynamicDepthClassifier if is_classifier else DynamicDepthASR
    return cls.from_hparams(source=source, **kwargs)
