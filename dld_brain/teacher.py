"""Finding, checking and freezing the static teacher used by RDLD (initialisation) and DLD (KD targets).

The teacher is loaded from a SpeechBrain checkpoint of the static model (``model.ckpt`` +
``normalize.ckpt``), checked against the student's architecture and vocabulary with an error that
names what differs, then kept in eval mode with ``requires_grad=False`` outside ``Brain.modules``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Optional, Union

import torch
import yaml
from speechbrain.utils.checkpoints import DEFAULT_LOAD_HOOKS, get_default_hook
from speechbrain.utils.logger import get_logger

from dld_brain.safe_files import UnreadableFileError, UntrustedFileError, load_weights, weights_only_loading

logger = get_logger(__name__)  # SpeechBrain's: logs on the main process only

_ENCODER_LAYER_KEY = re.compile(r"^encoder\.(?:.+?\.)?layers\.(\d+)\.")  # first layers.<i> after encoder.


class TeacherError(ValueError):
    """The teacher checkpoint is missing or does not fit the student; the message says what differs."""


def _ckpt_dirs(folder: Path) -> list[Path]:
    """Checkpoint dirs under ``folder``; ones our AtomicCheckpointer left unfinished (no COMPLETE marker
    while complete siblings have one) are skipped."""
    dirs = sorted(p for p in folder.glob("CKPT+*") if (p / "CKPT.yaml").is_file())
    marked = [p for p in dirs if (p / "COMPLETE").is_file()]
    return marked or dirs


def find_checkpoint(path: Union[str, Path], min_key: Optional[str] = "WER") -> Path:
    """Resolve a teacher path to one checkpoint directory.

    ``path`` is a ``CKPT+...`` folder, a checkpointer ``save`` folder, or a run's output folder holding
    ``save/``. Among several checkpoints the one with the lowest ``min_key`` in its metadata wins (the one
    SpeechBrain's evaluation would load), else the newest.
    """
    path = Path(path)
    if (path / "CKPT.yaml").is_file():
        return path
    if not path.exists():
        raise TeacherError(f"teacher checkpoint not found: {path} does not exist. Train the teacher first "
                           "(its hparams file, e.g. hparams/fsdd/teacher.yaml) or fix teacher_checkpoint.")
    candidates = _ckpt_dirs(path) or _ckpt_dirs(path / "save")
    if not candidates:
        raise TeacherError(f"no SpeechBrain checkpoint (CKPT+*/CKPT.yaml) under {path} or {path / 'save'}; "
                           "point teacher_checkpoint at the teacher run's output folder")
    metas = []
    for ckpt in candidates:
        with open(ckpt / "CKPT.yaml") as handle:
            metas.append((ckpt, yaml.safe_load(handle) or {}))
    scored = [(m[min_key], c) for c, m in metas if min_key and isinstance(m.get(min_key), (int, float))]
    if scored:
        return min(scored, key=lambda s: s[0])[1]
    return max(metas, key=lambda cm: cm[1].get("unixtime", 0))[0]


def check_state_compatible(student_state: dict, teacher_state: dict, source: str) -> None:
    """Raise TeacherError naming the first architecture, depth or vocabulary difference."""
    s_keys, t_keys = set(student_state), set(teacher_state)
    if s_keys != t_keys:
        missing, extra = sorted(s_keys - t_keys), sorted(t_keys - s_keys)

        def layers(keys):  # encoder.layers.<i>. (conformer) or encoder.<...>.layers.<i>. (e.g. WavLM)
            return {int(m.group(1)) for m in map(_ENCODER_LAYER_KEY.match, keys) if m}

        s_layers, t_layers = layers(s_keys), layers(t_keys)
        if s_layers != t_layers:
            raise TeacherError(f"teacher {source} has {len(t_layers)} encoder layers but the student has "
                               f"{len(s_layers)}: use a teacher of the same depth (num_layers)")
        raise TeacherError(f"teacher {source} is another architecture: parameters missing {missing[:5]}, "
                           f"unexpected {extra[:5]}")
    head = ("ctc_head", "classifier")
    for key in sorted(s_keys, key=lambda k: (k.startswith(head), k)):  # output layers last
        s_shape, t_shape = tuple(student_state[key].shape), tuple(teacher_state[key].shape)
        if s_shape == t_shape:
            continue
        if key.startswith(head) and s_shape[1:] == t_shape[1:]:
            raise TeacherError(f"teacher {source} has an output vocabulary of {t_shape[0]} units but the "
                               f"student has {s_shape[0]}: teacher and student must share the tokenizer "
                               f"/ label encoder ({key})")
        raise TeacherError(f"teacher {source} is another architecture: {key} has shape {t_shape} there "
                           f"and {s_shape} in the student (check d_model, d_ffn, nhead, kernel_size)")


def load_module_checked(module: torch.nn.Module, ckpt_file: Path) -> None:
    """Load a module's state from ``ckpt_file`` after checking it fits (see check_state_compatible)."""
    if not ckpt_file.is_file():
        raise TeacherError(f"teacher checkpoint file missing: {ckpt_file}")
    try:
        state = load_weights(ckpt_file)
    except UntrustedFileError as err:
        if not isinstance(err, UnreadableFileError):
            raise
        raise TeacherError(f"teacher checkpoint {ckpt_file} is unreadable ({err}); retrain or re-copy it") from err
    except Exception as err:
        raise TeacherError(f"teacher checkpoint {ckpt_file} is unreadable ({err}); retrain or re-copy it") from err
    check_state_compatible(module.state_dict(), state, str(ckpt_file))
    module.load_state_dict(state)


def load_with_default_hook(module, path: Path) -> None:
    """Load a module without parameters (e.g. normalisation statistics) with its SpeechBrain load hook, every
    ``torch.load`` inside reading tensors and plain types only (see dld_brain.safe_files)."""
    with weights_only_loading():
        get_default_hook(module, DEFAULT_LOAD_HOOKS)(module, path, False)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Put a module in eval mode with no gradients; return it."""
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


#: ``teacher_checkpoint`` value for a student built from a pretrained model: its initial weights are the teacher
PRETRAINED_TEACHER = "pretrained"


def teacher_from_student(student_modules: dict[str, torch.nn.Module], device=None) -> dict[str, torch.nn.Module]:
    """Frozen copies of the student's modules as they are now (e.g. a pretrained SpeechBrain model made
    dynamic, see :mod:`dld_brain.pretrained`): the DLD teacher when ``teacher_checkpoint: pretrained``."""
    teacher = {name: freeze(copy.deepcopy(module)) for name, module in student_modules.items()}
    if device is not None:
        for module in teacher.values():
            module.to(device)
    logger.info("Teacher: a frozen copy of the student's initial (pretrained) weights")
    return teacher


def load_teacher(
    student_modules: dict[str, torch.nn.Module], checkpoint: Union[str, Path], min_key: Optional[str] = "WER"
) -> tuple[dict[str, torch.nn.Module], Path]:
    """Build frozen copies of ``student_modules`` ({name: module}) holding the teacher's weights.

    The files read are ``<ckpt>/<name>.ckpt``; modules with parameters are shape-checked, others (e.g.
    feature normalisation statistics) use their SpeechBrain load hook. Returns (teacher modules, ckpt dir).
    """
    ckpt = find_checkpoint(checkpoint, min_key)
    teacher = {}
    for name, module in student_modules.items():
        copy_ = copy.deepcopy(module)
        path = ckpt / f"{name}.ckpt"
        if any(True for _ in copy_.parameters()):
            load_module_checked(copy_, path)
        else:
            if not path.is_file():
                raise TeacherError(f"teacher checkpoint file missing: {path}")
            load_with_default_hook(copy_, path)
        teacher[name] = freeze(copy_)
    logger.info("Loaded frozen teacher from %s", ckpt)
    return teacher, ckpt
