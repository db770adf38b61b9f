"""Edge deployment: one exported artifact, any depth chosen per call, audio in, words out, no torch.

An edge artifact is one folder written by :func:`dld_brain.export.export_edge`
(``python -m dld_brain.export --model BUNDLE --edge DIR``):

* ``frontend.onnx`` (normalised filterbanks -> encoder input, padding mask, relative positions),
* ``layer_00.onnx`` ... ``layer_{N-1}.onnx`` (each conformer layer once, its weights stored once),
* ``head.onnx`` (final norm + CTC head + log-softmax),
* ``features.npz`` (STFT window, mel matrix and normaliser statistics taken from the trained model),
* ``edge.json`` (depth policy, sample rate, blank index, token strings, feature settings).

:class:`EdgeASR` (``python -m dld_brain.edge --model DIR --depth 3 a.wav``) chains front-end, the chosen
layers and head with onnxruntime; a skipped layer's graph is simply not run. Features and CTC decoding
(greedy, or lexicon-constrained prefix search) are NumPy. This package imports only numpy, soundfile and
onnxruntime, never torch, so a device needs none of the training stack.
"""

from dld_brain.edge.ctc import ctc_greedy, ctc_lexicon_search, tokens_to_text
from dld_brain.edge.features import NumpyFbank, normalize
from dld_brain.edge.runner import EdgeASR, EdgeInputError, edge_layers

__all__ = ["EdgeASR", "EdgeInputError", "NumpyFbank", "ctc_greedy", "ctc_lexicon_search", "edge_layers",
           "normalize", "tokens_to_text"]
