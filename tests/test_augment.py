"""SpeechBrain Augmenter objects in the Brains: batch replication with matching label replication, and the
older call forms (a plain module, a list of modules) still working."""

import pytest
import speechbrain as sb
import torch
from speechbrain.augment.augmenter import Augmenter
from speechbrain.augment.freq_domain import SpectrogramDrop, Warping
from speechbrain.augment.time_domain import SpeedPerturb
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.features import Fbank
from speechbrain.nnet.losses import ctc_loss
from speechbrain.processing.features import InputNormalization
from speechbrain.utils.epoch_loop import EpochCounter

from dld_brain.augment import apply_augment, replicate_labels
from dld_brain.brain import DynamicDepthCTCBrain
from dld_brain.lobes import ConformerCTC


class Recorder:
    """ctc_cost that records the batch it was given (SpeechBrain's ctc_loss underneath)."""

    def __init__(self):
        self.calls = []

    def __call__(self, log_probs, tokens, wav_lens, tokens_lens):
        self.calls.append((log_probs.shape[0], tokens.clone(), tokens_lens.clone()))
        return ctc_loss(log_probs, tokens, wav_lens, tokens_lens, blank_index=0)


def make_brain(wav_augment=None, spec_augment=None, tmp_path=None):
    torch.manual_seed(0)
    model = ConformerCTC(n_mels=16, vocab_size=6, d_model=16, num_layers=2, nhead=2, d_ffn=32, kernel_size=3,
                         drop_prob=0.0)
    normalize = InputNormalization(norm_type="global")
    hparams = dict(compute_features=Fbank(n_mels=16), ctc_cost=Recorder(), blank_index=0,
                   epoch_counter=EpochCounter(1), train_logger=None, tokenizer=None,
                   wav_augment=wav_augment, spec_augment=spec_augment)
    brain = DynamicDepthCTCBrain(modules={"model": model, "normalize": normalize},
                                 opt_class=lambda p: torch.optim.SGD(p, lr=0.01), hparams=hparams,
                                 run_opts={"device": "cpu"})
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN)
    return brain


def make_batch():
    torch.manual_seed(1)
    items = [{"id": f"u{i}", "sig": torch.randn(1600 + 400 * i), "wrd": "a",
              "tokens": torch.tensor([1 + i, 2 + i, 3][: 3 - i])} for i in range(3)]
    return PaddedBatch(items)


def test_augmenter_replication_trains_a_step_with_replicated_labels():
    """wav Augmenter: originals + speed-perturbed copies of the first two utterances; feature Augmenter:
    two parallel augmentations (time/frequency masks) of everything. The CTC loss must see each utterance's
    own tokens at the replicated positions."""
    wav_aug = Augmenter(concat_original=True, augment_end_index=2, min_augmentations=1, max_augmentations=1,
                        augmentations=[SpeedPerturb(orig_freq=16000, speeds=[90])])
    spec_aug = Augmenter(parallel_augment=True, min_augmentations=2, max_augmentations=2,
                         augmentations=[SpectrogramDrop(drop_length_low=1, drop_length_high=3, dim=1),
                                        SpectrogramDrop(drop_length_low=1, drop_length_high=3, dim=2)])
    brain = make_brain(wav_aug, spec_aug)
    batch = make_batch()
    tokens, tokens_lens = batch.tokens
    before = [p.detach().clone() for p in brain.modules.model.parameters()]
    loss = brain.fit_batch(batch)
    assert torch.isfinite(loss)
    size, seen_tokens, seen_lens = brain.hparams.ctc_cost.calls[-1]
    order = [0, 1, 2, 0, 1] * 2  # wav: originals then augmented 0, 1; features: two parallel copies
    assert size == len(order)
    assert torch.equal(seen_tokens, tokens[order]) and torch.equal(seen_lens, tokens_lens[order])
    assert any(not torch.equal(a, p) for a, p in zip(before, brain.modules.model.parameters()))


def test_augmenter_without_replication_keeps_the_batch():
    """SpeechBrain's conformer-recipe feature Augmenter (time drop, frequency drop, warping) keeps the batch
    size; labels pass unchanged; outside training nothing is augmented."""
    fea_aug = Augmenter(min_augmentations=3, max_augmentations=3,
                        augmentations=[SpectrogramDrop(drop_length_low=1, drop_length_high=3, replace="mean"),
                                       SpectrogramDrop(drop_length_low=1, drop_length_high=3, replace="mean", dim=2),
                                       Warping()])
    brain = make_brain(None, fea_aug)
    batch = make_batch()
    brain.fit_batch(batch)
    size, seen_tokens, _ = brain.hparams.ctc_cost.calls[-1]
    assert size == 3 and torch.equal(seen_tokens, batch.tokens.data)
    feats, lens = brain.compute_features(batch, sb.Stage.VALID)
    assert feats.shape[0] == 3 and torch.equal(lens, batch.sig.lengths)


def test_augment_old_call_forms_still_work():
    """A plain module (called with x only) and a list of modules are applied in order; lengths unchanged."""
    x, lens = torch.randn(2, 30, 8), torch.tensor([1.0, 0.5])
    calls = []

    def first(t):
        calls.append("first")
        return t + 1

    def second(t):
        calls.append("second")
        return t * 2

    out, out_lens = apply_augment([first, second], x, lens)
    assert calls == ["first", "second"] and torch.allclose(out, (x + 1) * 2) and out_lens is lens
    out, _ = apply_augment(first, x, lens)
    assert torch.allclose(out, x + 1)
    assert apply_augment(None, x, lens)[0] is x
    labels = torch.tensor([3, 4])
    assert replicate_labels([first, None], labels) is labels


@pytest.mark.parametrize("hparams_file", ["hparams/librispeech_base.yaml", "hparams/tedlium3/base.yaml"])
def test_corpus_configs_use_speechbrain_conformer_augmentation(hparams_file):
    """LibriSpeech / TED-LIUM 3 use SpeechBrain's conformer-recipe augmentation: speed perturbation in a wav
    Augmenter, time drop + frequency drop + time warping in a feature Augmenter."""
    from dld_brain.hparams import load_hparams

    hp = load_hparams(hparams_file, {"data_folder": "/nonexistent", "experiment_root": "/tmp/x", "num_layers": 1,
                                      "d_model": 16, "nhead": 2, "d_ffn": 16})
    wav, spec = hp["wav_augment"], hp["spec_augment"]
    assert isinstance(wav, Augmenter) and isinstance(spec, Augmenter)
    assert [type(a).__name__ for a in wav.augmentations.values()] == ["SpeedPerturb"]
    assert [type(a).__name__ for a in spec.augmentations.values()] == ["SpectrogramDrop", "SpectrogramDrop", "Warping"]
