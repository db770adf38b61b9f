"""The edge runner: audio in, words out with onnxruntime + NumPy, the depth chosen per call.

It chains ``frontend.onnx``, the chosen ``layer_XX.onnx`` graphs and ``head.onnx`` of an artifact written by
:func:`dld_brain.export.export_edge`; the intermediate tensors stay NumPy arrays between sessions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from dld_brain.edge.ctc import Lexicon, ctc_greedy, ctc_lexicon_search, tokens_to_text
from dld_brain.edge.features import NumpyFbank, normalize

EDGE_JSON = "edge.json"
FEATURES_NPZ = "features.npz"
LEXICON_TXT = "lexicon.txt"


class EdgeInputError(ValueError):
    """A missing artifact, bad depth or unusable audio file; the message names it and says what to do."""


def edge_layers(num_layers: int, depth: Optional[int] = None, layers: Optional[Sequence[int]] = None,
                policy: str = "even") -> list[int]:
    """The layers to run, exactly as :func:`dld_brain.gates.select_layers` chooses them (that module needs
    torch): an explicit ``layers`` list, else ``depth`` layers by ``policy``, else all."""
    valid = f"valid layers are 0..{num_layers - 1}"
    if layers is not None:
        out = sorted(int(i) for i in layers)
        if not out or len(set(out)) != len(out) or not all(0 <= i < num_layers for i in out):
            raise EdgeInputError(f"layer list {list(layers)} is invalid: give distinct layers; {valid}")
        return out
    if depth is None:
        return list(range(num_layers))
    if not 1 <= int(depth) <= num_layers:
        raise EdgeInputError(f"depth {depth} is out of range: this model has {num_layers} layers (1..{num_layers})")
    depth = int(depth)
    if policy == "even":
        return [(2 * (i + 1) * num_layers + depth) // (2 * depth) - 1 for i in range(depth)]
    if policy == "first":
        return list(range(depth))
    if policy == "last":
        return list(range(num_layers - depth, num_layers))
    raise EdgeInputError(f"unknown depth policy {policy!r} in {EDGE_JSON}")


def read_lexicon(path: Union[str, Path]) -> list[str]:
    """Words of a lexicon file: whitespace-separated words (one per line or not)."""
    try:
        return Path(path).read_text(encoding="utf-8").split()
    except OSError as err:
        raise EdgeInputError(f"cannot read lexicon {path}: {err.strerror}") from None


class EdgeASR:
    """An edge artifact loaded with onnxruntime: ``transcribe_file(path, depth=3)`` or ``log_probs``.

    ``threads``: onnxruntime intra-op threads (0 = its default); ``lexicon``: words for
    ``decoder="lexicon"`` (default: the artifact's ``lexicon.txt`` if it has one).
    """

    def __init__(self, folder: Union[str, Path], threads: int = 0, lexicon: Optional[Iterable[str]] = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        meta_file = self.folder / EDGE_JSON
        if not meta_file.is_file():
            raise EdgeInputError(f"{self.folder} is not an edge artifact (no {EDGE_JSON}); write one with "
                                 "python -m dld_brain.export --model BUNDLE --edge DIR")
        self.meta = json.loads(meta_file.read_text())
        arrays = np.load(self.folder / FEATURES_NPZ)
        self.fbank = NumpyFbank(arrays["window"], arrays["fbank_matrix"], self.meta["features"])
        self.norm = dict(self.meta["normalize"])
        if self.norm["norm_type"] == "global":
            self.norm.update(glob_mean=arrays["glob_mean"], glob_std=arrays["glob_std"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1

        def session(name):
            return ort.InferenceSession(str(self.folder / name), options, providers=["CPUExecutionProvider"])

        graphs = self.meta["graphs"]
        self.frontend = session(graphs["frontend"])
        self.layers = [session(name) for name in graphs["layers"]]
        self.head = session(graphs["head"])
        self.pieces = self.meta["pieces"]
        words = lexicon if lexicon is not None else (
            read_lexicon(self.folder / LEXICON_TXT) if (self.folder / LEXICON_TXT).is_file() else None)
        self.lexicon = Lexicon(words) if words is not None else None
        #: layers run by the last call (a skipped layer's graph is never run)
        self.last_layers: list[int] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    def layers_for(self, depth: Optional[int] = None, layers: Optional[Sequence[int]] = None) -> list[int]:
        return edge_layers(self.num_layers, depth, layers, self.meta["depth_policy"])

    # ---------------------------------------------------------------- audio
    def read_audio(self, path: Union[str, Path]) -> np.ndarray:
        """Mono float32 waveform at the model's rate (stereo averaged); EdgeInputError otherwise."""
        import soundfile

        try:
            audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises its own error types and RuntimeError
            raise EdgeInputError(f"cannot read {path}: {err}") from None
        if rate != self.sample_rate:
            raise EdgeInputError(f"{path} is at {rate} Hz; this model needs {self.sample_rate} Hz: resample it "
                                 f"first (e.g. sox {path} -r {self.sample_rate} out.wav)")
        audio = audio.mean(axis=1)
        if audio.size < self.meta["features"]["n_fft"] or not np.abs(audio).max() > 1e-4:
            raise EdgeInputError(f"{path} is too short or silent: nothing to transcribe")
        return audio

    def features(self, wav: np.ndarray) -> np.ndarray:
        """(samples,) -> (1, frames, n_mels) normalised filterbanks, as the trained model saw them."""
        return normalize(self.fbank(wav), self.norm)[None]

    # ---------------------------------------------------------------- model
    def log_probs(self, feats: np.ndarray, wav_lens: Optional[np.ndarray] = None, depth: Optional[int] = None,
                  layers: Optional[Sequence[int]] = None) -> np.ndarray:
        """(B, frames, n_mels) features -> (B, T', vocab) CTC log-probabilities at the chosen layers."""
        run = self.layers_for(depth, layers)
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        lens = np.ones(feats.shape[0], np.float32) if wav_lens is None else np.asarray(wav_lens, np.float32)
        x, pad_mask, pos = self.frontend.run(None, {"feats": feats, "wav_lens": lens})
        for i in run:
            (x,) = self.layers[i].run(None, {"x": x, "pad_mask": pad_mask, "pos_embs": pos})
        self.last_layers = run
        return self.head.run(None, {"x": x})[0]

    def decode(self, log_probs: np.ndarray, decoder: str = "greedy", beam: int = 16) -> str:
        """Text of one utterance's (T', vocab) log-probabilities: ``greedy`` or ``lexicon``."""
        blank = int(self.meta["blank_index"])
        if decoder == "greedy":
            ids = ctc_greedy(log_probs, blank)
        elif decoder == "lexicon":
            if self.lexicon is None:
                raise EdgeInputError(f"decoder 'lexicon' needs a word list: pass --lexicon FILE or export the "
                                     f"artifact with --lexicon (it then holds {LEXICON_TXT})")
            ids = ctc_lexicon_search(log_probs, self.pieces, self.lexicon, blank, beam=beam)
        else:
            raise EdgeInputError(f"unknown decoder {decoder!r}: greedy or lexicon")
        return tokens_to_text(ids, self.pieces)

    def transcribe_file(self, path: Union[str, Path], depth: Optional[int] = None,
                        layers: Optional[Sequence[int]] = None, decoder: str = "greedy") -> str:
        """Transcript of one audio file at the chosen depth (or explicit layers)."""
        feats = self.features(self.read_audio(path))
        return self.decode(self.log_probs(feats, depth=depth, layers=layers)[0], decoder)
