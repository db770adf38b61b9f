"""The shared body of every ASR recipe's ``train.py``: parse, prepare, tokenise, train, depth sweep.

A recipe only supplies its data preparation function; everything else (Brain, teacher, losses, gates,
evaluation) is here, so recipes stay thin and identical in behaviour.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.logger import get_logger

from dld_brain.brain import DynamicDepthCTCBrain, EvaluationError, MethodConfigError, NonFiniteLossError
from dld_brain.checkpointing import CheckpointFileError
from dld_brain.data.manifest import DataPrepError
from dld_brain.dataio import AudioError, make_asr_datasets, train_tokenizer
from dld_brain.decoding import DecoderConfigError, build_decoder
from dld_brain.export import write_inference_bundle
from dld_brain.gates import DepthError, select_layers
from dld_brain.hparams import HparamsError, load_hparams, resolved_yaml_text
from dld_brain.safe_files import UntrustedFileError
from dld_brain.sweep import depth_sweep
from dld_brain.teacher import TeacherError
from dld_brain.validation import BadDataError

logger = get_logger(__name__)  # SpeechBrain's: logs on the main process only

#: Errors that are the user's to fix: printed as one clear line, no traceback.
USER_ERRORS = (NonFiniteLossError, BadDataError, EvaluationError, DataPrepError, HparamsError, TeacherError, DepthError,
               MethodConfigError, AudioError, UntrustedFileError, DecoderConfigError, CheckpointFileError)


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


def world_size() -> int:
    """Number of training processes (1 unless launched with torchrun / DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def effective_batch(hparams: dict, world: int, grad_accumulation: int = 1) -> dict:
    """The batch of one optimiser step, from the hparams and the number of processes ``world``.

    With ``dynamic_batching`` and ``batch_seconds`` set, ``batch_seconds`` is the audio of one optimiser
    step over all GPUs, so the optimisation (and the step-based ``warmup_steps``) is the same on 1, 4 or 8
    GPUs: each GPU gets batches of ``batch_seconds / (world * accumulation)`` seconds, with the fewest
    gradient-accumulation steps (at least ``grad_accumulation``) that keep them within
    ``dynamic_batch_sampler_train.max_batch_length`` (the per-GPU memory cap). Without ``batch_seconds`` the
    per-GPU size is fixed and the step grows with the GPU count (SpeechBrain's behaviour).

    Returns ``world_size``, ``grad_accumulation``, ``per_gpu`` (seconds, or utterances without dynamic
    batching), ``per_step`` (per_gpu x world x accumulation) and ``unit`` ("s" or "utterances").
    """
    accum = max(int(grad_accumulation), 1)
    if not hparams.get("dynamic_batching", False):
        per_gpu, unit = int(hparams["train_dataloader_opts"]["batch_size"]), "utterances"
    else:
        unit = "s"
        cap = float(hparams["dynamic_batch_sampler_train"]["max_batch_length"])
        total = hparams.get("batch_seconds")
        if total is None:
            per_gpu = cap
        else:
            if float(total) <= 0:
                raise HparamsError(f"batch_seconds must be > 0 (seconds of audio per optimiser step), got {total}")
            accum = max(accum, math.ceil(float(total) / (world * cap) - 1e-9))
            per_gpu = float(total) / (world * accum)
    return {"world_size": world, "grad_accumulation": accum, "per_gpu": per_gpu,
            "per_step": per_gpu * world * accum, "unit": unit}


def train_loader_options(hparams: dict, train_set, max_batch_length: Optional[float] = None) -> dict:
    """Training DataLoader options; with ``dynamic_batching: True`` a duration-bucketed batch sampler
    (SpeechBrain's DynamicBatchSampler, options in ``dynamic_batch_sampler_train``, its batch length
    replaced by ``max_batch_length`` when given) replaces batch_size."""
    opts = dict(hparams["train_dataloader_opts"])
    # A private generator: creating a DataLoader iterator then draws nothing from the global RNG, so
    # a run resumed mid-epoch consumes exactly the random numbers the uninterrupted run would have.
    opts.setdefault("generator", torch.Generator().manual_seed(int(hparams.get("seed", 0))))
    if not hparams.get("dynamic_batching", False):
        return opts
    from speechbrain.dataio.sampler import DynamicBatchSampler

    sampler_opts = dict(hparams["dynamic_batch_sampler_train"])
    sampler_opts.setdefault("seed", int(hparams.get("seed", 0)))  # batch order follows the experiment's seed
    if max_batch_length is not None:
        sampler_opts["max_batch_length"] = max_batch_length
    sampler = DynamicBatchSampler(train_set, length_func=lambda x: float(x["duration"]), **sampler_opts)
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
    decoder = build_decoder(hparams, tokenizer, hparams["output_folder"])  # a lexicon error before training
    fit_and_sweep(brain, datasets, hparams, decoder=decoder)
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
    (duration buckets when configured, private generators for exact resumption) and the batch of
    :func:`effective_batch` (per-GPU size and gradient accumulation from the world size), logged at start."""
    if hparams.get("skip_training", False):
        return
    check_averaging(hparams)
    batch = effective_batch(hparams, world_size(), getattr(brain, "grad_accumulation_factor", 1))
    brain.grad_accumulation_factor = batch["grad_accumulation"]
    logger.info("Effective batch: %g %s per optimiser step = %d process(es) x %g %s x %d "
                "gradient-accumulation step(s)%s", batch["per_step"],
                "s of audio" if batch["unit"] == "s" else batch["unit"], batch["world_size"],
                batch["per_gpu"], batch["unit"], batch["grad_accumulation"],
                "" if hparams.get("batch_seconds") or batch["world_size"] == 1 else
                " (grows with the GPU count: set batch_seconds to keep the optimisation of one GPU)")
    per_gpu = batch["per_gpu"] if hparams.get("dynamic_batching", False) else None
    brain.fit(brain.hparams.epoch_counter, datasets["train"], datasets["valid"],
              train_loader_kwargs=train_loader_options(hparams, datasets["train"], per_gpu),
              valid_loader_kwargs=private_generator(hparams["valid_dataloader_opts"], hparams))


def check_averaging(hparams: dict) -> None:
    """``avg_checkpoints: k`` needs k kept checkpoints: reject a training run that would keep fewer."""
    avg = int(hparams.get("avg_checkpoints", 1) or 1)
    keep = int(hparams.get("ckpts_to_keep", 2))
    if avg > keep:
        raise HparamsError(f"avg_checkpoints: {avg} needs at least {avg} kept checkpoints but ckpts_to_keep is "
                           f"{keep}: set --ckpts_to_keep={avg} (or more)")


def fit_and_sweep(brain, datasets: dict, hparams: dict, metric: str = "WER", max_key: Optional[str] = None,
                  decoder=None):
    """:func:`fit`, then the depth sweep on every set named in ``test_csvs`` (greedy and ``decoder`` WER);
    shared by the ASR and the classification recipes."""
    fit(brain, datasets, hparams)
    test_sets = {name: datasets[name] for name in hparams.get("test_csvs", {})}
    return depth_sweep(brain, test_sets, hparams["output_folder"], hparams.get("method", "model"),
                       depths=hparams.get("sweep_depths"), policy=hparams.get("sweep_policy"),
                       loader_kwargs=private_generator(hparams["test_dataloader_opts"], hparams),
                       tag=evaluation_tag(hparams), metric=metric,
                       min_key=None if max_key else metric, max_key=max_key, decoder=decoder)


def main_guard(fn: Callable[[], object]) -> None:
    """Run ``fn``; a user error is printed as ``error: <message>`` with exit status 2, no traceback."""
    try:
        fn()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
