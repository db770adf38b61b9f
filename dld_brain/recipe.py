"""The shared body of every ASR recipe's ``train.py``: parse, prepare, tokenise, train, depth sweep.

A recipe only supplies its data preparation function; everything else (Brain, teacher, losses, gates,
evaluation) is here, so recipes stay thin and identical in behaviour.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.logger import get_logger

from dld_brain.brain import DynamicDepthCTCBrain, EvaluationError, MethodConfigError, NonFiniteLossError
from dld_brain.data.manifest import DataPrepError
from dld_brain.dataio import AudioError, make_asr_datasets, train_tokenizer
from dld_brain.export import write_inference_bundle
from dld_brain.gates import DepthError, select_layers
from dld_brain.hparams import HparamsError, load_hparams, resolved_yaml_text
from dld_brain.sweep import depth_sweep
from dld_brain.teacher import TeacherError
from dld_brain.validation import BadDataError

logger = get_logger(__name__)  # SpeechBrain's: logs on the main process only

#: Errors that are the user's to fix: printed as one clear line, no traceback.
USER_ERRORS = (NonFiniteLossError, BadDataError, EvaluationError, DataPrepError, HparamsError, TeacherError, DepthError, MethodConfigError, AudioError)


def setup_experiment(argv: Sequence[str]) -> tuple[dict, dict, str]:
    """Parse the command line, load the hparams and create the output folder (log, resolved hparams)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(list(argv))
    check_run_opts(run_opts)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless launched with torchrun
    hparams = load_hparams(hparams_file, overrides)
    if run_opts.get("test_only"):  # SpeechBrain's evaluation-only flag = our skip_training
        hparams["skip_training"] = True
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"])
    resolved = resolved_yaml_text(hparams_file, overrides)
    if sb.utils.distributed.if_main_process():
        (Path(hparams["output_folder"]) / "hyperparams.yaml").write_text(resolved)
    return hparams, run_opts, hparams_file


def check_run_opts(run_opts: dict) -> None:
    """Reject SpeechBrain run options the recipes do not support, with what to use instead."""
    if run_opts.get("data_parallel_backend"):
        raise HparamsError(
            "--data_parallel_backend (torch DataParallel) is not supported: its per-GPU replicas would draw "
            "different layer gates for one batch; use DDP instead: torchrun --nproc_per_node=<gpus> <recipe> ...")


def build_tokenizer(hparams: dict):
    """Train (once, on the main process) or load the SentencePiece model named in the hparams."""
    kwargs = dict(model_dir=hparams["tokenizer_folder"], train_csv=hparams["train_csv"],
                  vocab_size=hparams["vocab_size"], model_type=hparams.get("token_type", "unigram"))
    run_on_main(train_tokenizer, kwargs=kwargs)
    tokenizer = train_tokenizer(**kwargs)
    size = tokenizer.sp.get_piece_size()
    if size != hparams["vocab_size"]:
        raise HparamsError(
            f"the tokenizer in {hparams['tokenizer_folder']} has {size} units but vocab_size is "
            f"{hparams['vocab_size']}: set vocab_size: {size} (char models take their size from the data)")
    return tokenizer


def private_generator(opts: dict, hparams: dict) -> dict:
    """Loader options with a private torch.Generator (see train_loader_options)."""
    return {**opts, "generator": torch.Generator().manual_seed(int(hparams.get("seed", 0)))}


def train_loader_options(hparams: dict, train_set) -> dict:
    """Training DataLoader options; with ``dynamic_batching: True`` a duration-bucketed batch sampler
    (SpeechBrain's DynamicBatchSampler, options in ``dynamic_batch_sampler_train``) replaces batch_size."""
    opts = dict(hparams["train_dataloader_opts"])
    # A private generator: creating a DataLoader iterator then draws nothing from the global RNG, so
    # a run resumed mid-epoch consumes exactly the random numbers the uninterrupted run would have.
    opts.setdefault("generator", torch.Generator().manual_seed(int(hparams.get("seed", 0))))
    if not hparams.get("dynamic_batching", False):
        return opts
    from speechbrain.dataio.sampler import DynamicBatchSampler

    sampler = DynamicBatchSampler(train_set, length_func=lambda x: float(x["duration"]),
                                  **hparams["dynamic_batch_sampler_train"])
    return {"batch_sampler": sampler, "num_workers": opts.get("num_workers", 0), "generator": opts["generator"]}


def check_depth_options(hparams: dict) -> None:
    """Reject out-of-range ``valid_depths`` / ``sweep_depths`` / policy before anything runs."""
    encoder = hparams["model"].encoder
    for key in ("valid_depths", "sweep_depths"):
        depths = hparams.get(key)
        if depths == "all":
            continue
        if isinstance(depths, str):
            raise DepthError(f"{key} must be a list of depths, 'all' or null, got {depths!r}")
        for depth in depths or []:
            try:
                select_layers(encoder.num_layers, depth, policy=hparams.get("sweep_policy") or encoder.depth_policy)
            except DepthError as err:
                raise DepthError(f"{key}: {err}") from None


def evaluation_tag(hparams: dict) -> str:
    """File-name suffix saying which weights were evaluated: ``_ep<k>``, ``_avg<k>`` or nothing (best)."""
    if hparams.get("eval_epoch"):
        return f"_ep{int(hparams['eval_epoch'])}"
    if int(hparams.get("avg_checkpoints", 1) or 1) > 1:
        return f"_avg{int(hparams['avg_checkpoints'])}"
    return ""


def run_asr_recipe(
    argv: Sequence[str],
    prepare: Callable[[dict], object],
    configure: Optional[Callable[[dict], object]] = None,
) -> Optional[DynamicDepthCTCBrain]:
    """Run one method end to end; ``prepare(hparams)`` writes the manifests named by the hparams and the
    optional ``configure(hparams)`` adjusts them afterwards (e.g. adds a test set).

    Steps: data preparation (main process), tokenizer, training (unless ``skip_training``), and the depth
    sweep on every test set with ``wer_<set>_n<k>.txt`` and ``depth_sweep_<set>.csv/.md`` outputs.
    """
    hparams, run_opts, _ = setup_experiment(argv)
    check_depth_options(hparams)  # before any data preparation or training
    run_on_main(prepare, kwargs={"hparams": hparams})
    if configure is not None:
        configure(hparams)
    # a pretrained model brings its own tokenizer (e.g. hparams/librispeech_pretrained_dld.yaml)
    tokenizer = hparams.get("pretrained_tokenizer") or build_tokenizer(hparams)
    hparams["tokenizer"] = tokenizer
    datasets = make_asr_datasets(hparams, tokenizer)
    brain_class = hparams.get("brain_class") or DynamicDepthCTCBrain  # e.g. WavLMCTCBrain (two optimizers)
    brain = brain_class(
        modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
        run_opts=run_opts, checkpointer=hparams["checkpointer"],
    )
    fit_and_sweep(brain, datasets, hparams)
    if not hasattr(brain.model, "config") and not hasattr(brain.model, "bundle_config"):
        logger.info("No inference bundle for %s (a pretrained model made dynamic): load the checkpoint in "
                    "%s into the same YAML", type(brain.model).__name__, hparams["save_folder"])
    elif sb.utils.distributed.if_main_process():  # the evaluated weights, ready for dld_brain.inference
        bundle = write_inference_bundle(hparams, {"model": brain.model, "normalize": brain.modules.normalize},
                                        tokenizer.prefix_model_file + ".model",
                                        Path(hparams["output_folder"]) / f"inference{evaluation_tag(hparams)}")
        logger.info("Inference bundle: %s (load with dld_brain.inference.DynamicDepthASR)", bundle)
    return brain


def fit(brain, datasets: dict, hparams: dict) -> None:
    """Train (unless ``skip_training``) on ``datasets['train']``/``['valid']`` with the recipes' loader options
    (duration buckets when configured, private generators for exact resumption)."""
    if not hparams.get("skip_training", False):
        brain.fit(brain.hparams.epoch_counter, datasets["train"], datasets["valid"],
                  train_loader_kwargs=train_loader_options(hparams, datasets["train"]),
                  valid_loader_kwargs=private_generator(hparams["valid_dataloader_opts"], hparams))


def fit_and_sweep(brain, datasets: dict, hparams: dict, metric: str = "WER", max_key: Optional[str] = None):
    """:func:`fit`, then the depth sweep on every set named in ``test_csvs``; shared by the ASR and the
    classification recipes."""
    fit(brain, datasets, hparams)
    test_sets = {name: datasets[name] for name in hparams.get("test_csvs", {})}
    return depth_sweep(brain, test_sets, hparams["output_folder"], hparams.get("method", "model"),
                       depths=hparams.get("sweep_depths"), policy=hparams.get("sweep_policy"),
                       loader_kwargs=private_generator(hparams["test_dataloader_opts"], hparams),
                       tag=evaluation_tag(hparams), metric=metric,
                       min_key=None if max_key else metric, max_key=max_key)


def main_guard(fn: Callable[[], object]) -> None:
    """Run ``fn``; a user error is printed as ``error: <message>`` with exit status 2, no traceback."""
    try:
        fn()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
