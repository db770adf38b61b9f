"""Pretrained SpeechBrain models made dynamic: swap their encoder for the gated one, same weights and outputs.

:func:`make_dynamic` replaces every SpeechBrain ``ConformerEncoder`` / ``TransformerEncoder`` inside a model
(e.g. the ``TransformerASR`` of SpeechBrain's LibriSpeech conformer recipes, or the ``Transformer`` of a hub
model such as ``speechbrain/asr-conformer-transformerlm-librispeech``) by
:class:`~dld_brain.lobes.conformer.GatedConformerEncoder` / :class:`~dld_brain.lobes.transformer.GatedTransformerEncoder`.
The gated encoder takes over the original's sub-modules (no copy: the same parameter tensors, the same
``state_dict`` keys), so at full depth every output is unchanged; ``encoder.set_depth(n)`` /
``encoder.at_depth(n)`` then run n layers and the others are not called.

:class:`TransformerCTC` is the CTC view of such a model for the DLD recipes (teacher and student
initialisation): the conv front-end, the (gated) encoder and the CTC head, with the interface of
:class:`dld_brain.lobes.ConformerCTC`. **The attention decoder is dropped** from it: DLD distils the CTC
posteriors (KL(teacher || student) per frame), which the decoder does not influence, and a decoder in the
trained modules would only collect parameters without gradient. The original ``TransformerASR`` keeps its
decoder and shares the gated encoder object, so joint CTC/attention decoding still works at any depth.

Loading a hub model (needs access to huggingface.co)::

    python -m dld_brain.pretrained --source speechbrain/asr-conformer-transformerlm-librispeech \
        --audio example.wav --depths 4 8 12
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Optional, Sequence

import torch
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from speechbrain.lobes.models.transformer.Transformer import TransformerEncoder
from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask, make_transformer_src_tgt_masks

from dld_brain.gates import DynamicDepthMixin
from dld_brain.lobes.conformer import CTCOutputMixin, GatedConformerEncoder
from dld_brain.lobes.transformer import GatedTransformerEncoder

#: SpeechBrain encoder class -> its gated twin (exact type match: subclasses may change the forward)
GATED_TWINS = {ConformerEncoder: GatedConformerEncoder, TransformerEncoder: GatedTransformerEncoder}


class PretrainedModelError(ValueError):
    """A model without a supported encoder, or a pretrained interface without the expected modules."""


def gate_encoder(encoder: torch.nn.Module, drop_prob: float = 0.0, gate_seed: int = 0,
                 depth_policy: str = "even") -> DynamicDepthMixin:
    """The gated twin of one SpeechBrain encoder, built around the same sub-modules (weights shared, not copied).

    An encoder that is already gated is returned as is (with ``drop_prob`` unchanged).
    """
    if isinstance(encoder, DynamicDepthMixin):
        return encoder
    twin = GATED_TWINS.get(type(encoder))
    if twin is None:
        raise PretrainedModelError(
            f"cannot make {type(encoder).__name__} dynamic: supported encoders are SpeechBrain's "
            f"{', '.join(c.__name__ for c in GATED_TWINS)} (e.g. not BranchformerEncoder)")
    gated = twin.__new__(twin)
    state = dict(encoder.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        state[key] = state[key].copy()
    gated.__dict__.update(state)
    gated.layerdrop_prob = 0.0  # the gates replace SpeechBrain's own layer drop
    gated._init_gates(len(gated.layers), drop_prob, gate_seed, depth_policy)
    return gated


def make_dynamic(model: torch.nn.Module, drop_prob: float = 0.0, gate_seed: int = 0,
                 depth_policy: str = "even") -> torch.nn.Module:
    """Replace, in place, every SpeechBrain ``ConformerEncoder`` / ``TransformerEncoder`` in ``model`` by its
    gated twin (identical weights and, at full depth, identical outputs); return ``model`` (or the gated
    encoder when ``model`` is itself an encoder).

    Depth is then chosen on the encoder: ``model.encoder.set_depth(6)`` (TransformerASR) or
    ``with model.encoder.at_depth(6): ...``; :func:`dynamic_encoders` lists them. ``drop_prob`` > 0 makes
    training drop layers (RDsc/DLD-style); the default 0 keeps the model static until asked.
    """
    if type(model) in GATED_TWINS:
        return gate_encoder(model, drop_prob, gate_seed, depth_policy)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in GATED_TWINS:
                setattr(parent, name, gate_encoder(child, drop_prob, gate_seed, depth_policy))
                replaced += 1
    if not replaced and not dynamic_encoders(model):
        raise PretrainedModelError(
            f"no ConformerEncoder or TransformerEncoder found in {type(model).__name__}: make_dynamic needs a "
            "SpeechBrain model with one of them (e.g. TransformerASR with encoder_module conformer/transformer)")
    return model


def dynamic_encoders(model: torch.nn.Module) -> list:
    """The gated encoders inside ``model`` (in module order)."""
    return [m for m in model.modules() if isinstance(m, DynamicDepthMixin)]


class TransformerCTC(CTCOutputMixin, torch.nn.Module):
    """CTC model made of a SpeechBrain ``TransformerASR``'s encoder side: ``frontend`` (e.g. the recipe's
    ``CNN``), the ASR's source module, positional encoding and (gated) encoder, and ``ctc_head`` (its
    ``ctc_lin``). Same interface as :class:`dld_brain.lobes.ConformerCTC`: ``forward(feats, wav_lens,
    layers=None, gates=None)`` -> CTC log-probabilities (B, T', vocab), plus ``embed`` / ``run_layers`` /
    ``output`` / ``encode``. The attention decoder is not part of it (see the module docstring).
    """

    def __init__(self, frontend: torch.nn.Module, transformer: torch.nn.Module, ctc_head: torch.nn.Module,
                 drop_prob: Optional[float] = None, gate_seed: int = 0, depth_policy: str = "even"):
        super().__init__()
        if not hasattr(transformer, "custom_src_module") or not hasattr(transformer, "encoder"):
            raise PretrainedModelError(f"{type(transformer).__name__} is not a SpeechBrain TransformerASR "
                                       "(needs custom_src_module and encoder)")
        self.frontend = frontend
        self.src_module = transformer.custom_src_module
        self.pos_enc = getattr(transformer, "positional_encoding", None)
        encoder = transformer.encoder
        if not isinstance(encoder, DynamicDepthMixin):
            encoder = gate_encoder(encoder, drop_prob or 0.0, gate_seed, depth_policy)
            transformer.encoder = encoder  # the full TransformerASR (with decoder) shares the gated encoder
        elif drop_prob is not None:
            encoder.gate_sampler.drop_prob = float(drop_prob)
        self.encoder = encoder
        self.ctc_head = ctc_head
        self.attention_type = transformer.attention_type
        self.positional_encoding_type = getattr(transformer, "positional_encoding_type", None)
        self.causal = bool(getattr(transformer, "causal", False))
        self.vocab_size = int(ctc_head.w.out_features if hasattr(ctc_head, "w") else ctc_head.out_features)

    def embed(self, feats: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Front-end and source module: (B, T, n_mels) -> encoder input (B, T', d_model), padding mask (True=pad)."""
        src = self.frontend(feats)
        if src.dim() == 4:
            src = src.reshape(src.shape[0], src.shape[1], -1)
        pad_mask, _, _, _ = make_transformer_src_tgt_masks(src, None, wav_lens, causal=self.causal)
        return self.src_module(src), pad_mask

    def run_layers(self, x: torch.Tensor, pad_mask: torch.Tensor, layers=None, gates=None) -> torch.Tensor:
        """Positional encoding and gated encoder on :meth:`embed`'s output (as TransformerASR.encode does)."""
        pos_embs = None
        if self.attention_type == "RelPosMHAXL":
            pos_embs = self.pos_enc(x)
        elif self.positional_encoding_type == "fixed_abs_sine" and self.pos_enc is not None:
            x = x + self.pos_enc(x)
        src_mask = make_transformer_src_mask(x, causal=self.causal)
        out = self.encoder(x, src_mask=src_mask, src_key_padding_mask=pad_mask, pos_embs=pos_embs,
                           layers=layers, gates=gates)
        return out[0]



def _hparam(hparams, *names):
    for name in names:
        value = hparams.get(name) if isinstance(hparams, dict) else getattr(hparams, name, None)
        if value is not None:
            return value
    return None


def ctc_model_from_interface(asr, drop_prob: Optional[float] = None, gate_seed: int = 0,
                             depth_policy: str = "even", trainable: bool = True) -> dict:
    """The dynamic CTC model of a loaded SpeechBrain pretrained interface (``EncoderDecoderASR`` /
    ``EncoderASR`` of a conformer/transformer recipe) or of its hparams dict.

    Returns ``{"model": TransformerCTC, "normalize": ..., "compute_features": ..., "tokenizer": ...}``
    (the last three as the pretrained model defines them, None where absent), ready to serve as DLD teacher
    and student initialisation. Expects the hparams names of SpeechBrain's LibriSpeech recipes: ``CNN``,
    ``Transformer``, ``ctc_lin``. SpeechBrain's interfaces freeze their parameters; with ``trainable`` (the
    default) the CTC model's parameters get ``requires_grad`` back, so it can be the DLD student.
    """
    hparams = getattr(asr, "hparams", asr)
    frontend, transformer = _hparam(hparams, "CNN"), _hparam(hparams, "Transformer")
    ctc_head = _hparam(hparams, "ctc_lin")
    missing = [n for n, v in (("CNN", frontend), ("Transformer", transformer), ("ctc_lin", ctc_head)) if v is None]
    if missing:
        raise PretrainedModelError(f"the pretrained model's hparams lack {missing}: ctc_model_from_interface "
                                   "needs a CTC-trained conformer/transformer (CNN, Transformer, ctc_lin)")
    model = TransformerCTC(frontend, transformer, ctc_head, drop_prob, gate_seed, depth_policy)
    if trainable:
        for param in model.parameters():
            param.requires_grad_(True)
    return {"model": model, "normalize": _hparam(hparams, "normalize", "normalizer"),
            "compute_features": _hparam(hparams, "compute_features"), "tokenizer": _hparam(hparams, "tokenizer")}


@functools.lru_cache(maxsize=4)
def load_interface(source: str, savedir: Optional[str] = None):
    """SpeechBrain's ``EncoderDecoderASR`` for ``source`` (hub id or local folder), loaded once per process
    (the YAML helpers below share it)."""
    from speechbrain.inference.ASR import EncoderDecoderASR

    return EncoderDecoderASR.from_hparams(source=str(source), savedir=None if savedir is None else str(savedir))


def pretrained_ctc(source: str, savedir: Optional[str] = None, drop_prob: float = 0.0, gate_seed: int = 0,
                   depth_policy: str = "even") -> TransformerCTC:
    """The dynamic CTC model of a pretrained SpeechBrain ASR (for ``model: !apply:`` in a recipe YAML)."""
    return ctc_model_from_interface(load_interface(source, savedir), drop_prob, gate_seed, depth_policy)["model"]


def pretrained_part(source: str, name: str, savedir: Optional[str] = None):
    """One object of a pretrained SpeechBrain ASR's hparams (``normalize``, ``compute_features``,
    ``tokenizer``), so the recipe uses the features, statistics and tokens the model was trained with."""
    aliases = ("normalize", "normalizer") if name in ("normalize", "normalizer") else (name,)
    part = _hparam(load_interface(source, savedir).hparams, *aliases)
    if part is None:
        raise PretrainedModelError(f"the pretrained model {source} has no {name!r} in its hparams")
    if name == "normalize" and hasattr(part, "update_until_epoch"):
        part.update_until_epoch = 0  # keep the pretrained statistics
    return part


def _main(argv: Optional[Sequence[str]] = None) -> int:
    """Load a pretrained SpeechBrain ASR, make it dynamic and print CTC greedy transcripts per depth."""
    parser = argparse.ArgumentParser(prog="python -m dld_brain.pretrained", description=_main.__doc__)
    parser.add_argument("--source", required=True, help="hub id or local folder with hyperparams.yaml")
    parser.add_argument("--savedir", default=None, help="where the hub files are stored")
    parser.add_argument("--audio", nargs="+", required=True, help="audio files to transcribe")
    parser.add_argument("--depths", nargs="*", type=int, default=None, help="encoder depths (default: all)")
    args = parser.parse_args(argv)
    try:
        import speechbrain as sb
        from speechbrain.inference.ASR import EncoderDecoderASR

        asr = EncoderDecoderASR.from_hparams(source=args.source, savedir=args.savedir)
        parts = ctc_model_from_interface(asr)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: cannot load {args.source}: {str(err).splitlines()[0] if str(err) else err}", file=sys.stderr)
        return 2
    model, encoder = parts["model"].eval(), parts["model"].encoder
    depths = args.depths or list(range(1, encoder.num_layers + 1))
    for path in args.audio:
        wav = asr.load_audio(path).unsqueeze(0)
        lens = torch.ones(1)
        with torch.no_grad():
            feats = parts["normalize"](parts["compute_features"](wav), lens)
            for depth in depths:
                start = time.perf_counter()
                with encoder.at_depth(depth):
                    log_probs = model(feats, lens)
                ms = (time.perf_counter() - start) * 1000
                ids = sb.decoders.ctc_greedy_decode(log_probs, lens, blank_id=0)[0]
                print(f"{path}\tdepth {depth}\t{ms:.0f} ms\t{parts['tokenizer'].decode_ids(ids)}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
