"""The depth sweep: evaluated once under DDP (main process only), latency on median-length utterances."""

import functools
import json
import multiprocessing
import os
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from dld_brain.sweep import depth_sweep, latency_batch, measure_encoder_latency, median_length_indices

SAMPLE_RATE = 8000


def synthetic_set(durations) -> DynamicItemDataset:
    """A test set sorted by duration like the recipes' (seeded noise of the given durations, 2-word references)."""
    data = {f"u{i:02d}": {"duration": d, "wrd": "a b"} for i, d in enumerate(sorted(durations))}
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("id", "duration")
    @sb.utils.data_pipeline.provides("sig")
    def audio(uid, duration):
        gen = torch.Generator().manual_seed(int(uid[1:]))
        return torch.randn(int(duration * SAMPLE_RATE), generator=gen)

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("tokens")
    def tokens(_):
        return torch.tensor([1, 2])

    dataset.add_dynamic_item(audio)
    dataset.add_dynamic_item(tokens)
    dataset.set_output_keys(["id", "sig", "wrd", "tokens"])
    return dataset


# ---- latency batch ------------------------------------------------------------------------------------


def test_median_length_indices_take_the_middle_of_the_duration_order():
    durations = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0]
    chosen = median_length_indices(durations, 3)
    assert sorted(durations[i] for i in chosen) == [4.0, 5.0, 6.0]
    assert median_length_indices(durations, 20) == list(range(9))  # small sets: every utterance
    assert median_length_indices([], 8) == []


def test_latency_batch_is_median_length():
    durations = [0.2 + 0.1 * i for i in range(40)]  # 0.2 .. 4.1 s, the set sorted ascending
    dataset = synthetic_set(durations)

    class Brain:  # the latency batch only needs the brain's device and features
        device = "cpu"

        @staticmethod
        def compute_features(batch, stage):
            return batch.sig

    wavs, lens = latency_batch(Brain(), dataset, size=8)
    seconds = sorted((lens * wavs.shape[1] / SAMPLE_RATE).tolist())
    median = sorted(durations)[len(durations) // 2]
    assert len(seconds) == 8
    assert min(seconds) > sorted(durations)[8]  # not the 8 shortest
    assert seconds[0] <= median <= seconds[-1]  # around the median
    assert abs(sorted(seconds)[4] - median) < 0.15


def test_latency_is_measured_after_warmup_rounds():
    calls = []

    class Model(torch.nn.Module):
        def encode(self, feats, lens, layers=None):
            calls.append(tuple(layers))

    times = measure_encoder_latency(Model(), torch.zeros(1, 4, 2), torch.ones(1), [[0], [0, 1]], repeats=3, warmup=2)
    assert len(times) == 2
    assert calls == [(0,), (0, 1)] * 5  # 2 untimed rounds, then 3 timed round-robin repeats


# ---- DDP: only the main process evaluates and writes ----------------------------------------------------


class _Tokenizer:
    def decode_ids(self, ids):
        return " ".join("ab"[i % 2] for i in ids)


def _sweep_worker(rank: int, world: int, folder: str) -> None:
    """One torchrun-like rank (gloo, CPU): a DDP-wrapped tiny model, then the depth sweep; writes what this rank
    evaluated and returned to ``folder/rank<k>.json``."""
    import datetime

    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization
    from speechbrain.utils.epoch_loop import EpochCounter
    from speechbrain.utils.train_logger import FileTrainLogger

    from dld_brain.brain import DynamicDepthCTCBrain
    from dld_brain.lobes import ConformerCTC

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # as torchrun sets them
    folder = Path(folder)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                                         world_size=world, timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)
    model = ConformerCTC(n_mels=16, vocab_size=8, d_model=32, num_layers=4, nhead=2, d_ffn=64, kernel_size=3)
    hparams = dict(compute_features=Fbank(n_mels=16, sample_rate=SAMPLE_RATE), epoch_counter=EpochCounter(1),
                   ctc_cost=functools.partial(sb.nnet.losses.ctc_loss, blank_index=0), blank_index=0,
                   train_logger=FileTrainLogger(folder / "log.txt"), tokenizer=_Tokenizer())
    brain = DynamicDepthCTCBrain(modules={"model": model, "normalize": InputNormalization(norm_type="sentence")},
                                 hparams=hparams, run_opts={"device": "cpu"})
    brain.modules["model"] = torch.nn.parallel.DistributedDataParallel(model)  # as after fit() under torchrun
    evaluated = []
    evaluate = brain.evaluate
    brain.evaluate = lambda *a, **k: evaluated.append(1) or evaluate(*a, **k)
    table = depth_sweep(brain, {"test": synthetic_set([0.5, 0.6, 0.7, 0.8])}, folder / "out", "dld",
                        depths=[2, 4], latency_repeats=1, min_key=None,
                        loader_kwargs={"batch_size": 2})
    wrapped_after = isinstance(brain.modules["model"], torch.nn.parallel.DistributedDataParallel)
    (folder / f"rank{rank}.json").write_text(json.dumps(
        {"evaluations": len(evaluated), "depths": table["depth"].tolist(), "WER": table["WER"].tolist(),
         "wrapped_after": wrapped_after}))
    torch.distributed.destroy_process_group()


def test_sweep_under_ddp_runs_on_the_main_process_only(tmp_path):
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_sweep_worker, args=(rank, 2, str(tmp_path))) for rank in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert [p.exitcode for p in procs] == [0, 0], "a rank failed or hung (see the captured output)"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["evaluations"] == 2 and ranks[1]["evaluations"] == 0  # 2 depths x 1 set, on rank 0 only
    assert ranks[0]["depths"] == ranks[1]["depths"] == [2, 4]  # every rank gets the table
    assert ranks[0]["WER"] == ranks[1]["WER"]
    assert ranks[0]["wrapped_after"] and ranks[1]["wrapped_after"]  # the DDP wrapper is put back
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "depth_sweep_test.csv", "depth_sweep_test.md", "wer_test_n2.txt", "wer_test_n4.txt"]
