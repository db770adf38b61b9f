"""CSV manifests in SpeechBrain's schema (``ID, duration, wav, spk_id, wrd``) and shared prep helpers.

Every preparation script writes its manifests through :func:`write_manifest` (atomic, validated) and
uses :class:`PrepMarker` to skip work that was already done with the same options (idempotent prep);
corpora downloaded as archives go through :func:`downloaded_archive` (pinned sha256, safe extraction).

Audio paths are written relative to the corpus folder as ``$data_root/<path>`` (:func:`root_relative`),
SpeechBrain's convention: readers substitute the folder where the corpus is now
(``DynamicItemDataset.from_csv(csv, replacements={"data_root": data_folder})``, or :func:`read_manifest`
with ``replacements``), so a prepared corpus and its manifests can move to another disk or machine.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import soundfile

from dld_brain.safe_files import download, safe_extract

MANIFEST_FIELDS = ("ID", "duration", "wav", "spk_id", "wrd")
DATA_ROOT = "$data_root"
_VARIABLE = re.compile(r"\$([\w.]+)")


class DataPrepError(RuntimeError):
    """A corpus or manifest problem that the user must fix; the message names the file and the fix."""


@contextlib.contextmanager
def downloaded_archive(url: str, data_folder: str | os.PathLike, keep: Callable[[str], bool],
                       prefix: str = ".download_", sha256: Optional[str] = None,
                       how_to_pin: str = "pin it", content_pinned: bool = False) -> Iterator[Path]:
    """Download the archive (zip or tar) at ``url`` into a hidden temp folder inside ``data_folder``, check
    its ``sha256`` (pinned by the caller; none pinned = refused, unless ``content_pinned``: the caller checks
    the kept files with :func:`dld_brain.safe_files.verify_tree` before moving anything out), and yield the
    folder its members accepted by ``keep(name)`` were extracted to; the temp folder is removed afterwards.

    Nothing is unpacked unless a given hash matches, and nothing at all if any member is absolute, has a ``..``
    component or is a link leaving the folder (:func:`dld_brain.safe_files.safe_extract`). The caller moves
    the finished files into place with ``os.replace`` (same file system), the file that marks the copy
    complete last, so a killed download never looks complete.
    """
    data_folder = Path(data_folder)
    data_folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=data_folder, prefix=prefix))
    try:
        archive = download(url, tmp / "archive", sha256, what=f"the archive downloaded from {url}",
                           how_to_pin=how_to_pin, require_sha256=not content_pinned)
        yield safe_extract(archive, tmp / "extracted", keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def audio_info(path: str | os.PathLike) -> tuple[float, int, int]:
    """Return ``(duration_s, sample_rate, channels)`` of an audio file, or raise DataPrepError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"Audio file not found: {path}")
    try:
        info = soundfile.info(str(path))
    except Exception as err:  # soundfile raises several types for broken files
        raise DataPrepError(
            f"Unreadable audio file {path}: {err}. Re-download or remove it from the corpus."
        ) from err
    if info.frames <= 0:
        raise DataPrepError(f"Empty audio file (0 samples): {path}")
    return info.frames / info.samplerate, info.samplerate, info.channels


def write_manifest(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, object]],
    fields: Sequence[str] = MANIFEST_FIELDS,
) -> int:
    """Write ``rows`` to a CSV at ``path`` atomically (temp file + rename); return the row count.

    Raises DataPrepError for a missing field or a duplicate ID, so a half-valid manifest never lands.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fields))
            writer.writeheader()
            for row in rows:
                missing = [f for f in fields if f not in row]
                if missing:
                    raise DataPrepError(f"{path}: row {row.get('ID', count)} lacks fields {missing}")
                if row["ID"] in seen:
                    raise DataPrepError(f"{path}: duplicate ID {row['ID']}")
                seen.add(str(row["ID"]))
                writer.writerow({f: row[f] for f in fields})
                count += 1
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return count


def root_relative(path: str | os.PathLike, data_root: str | os.PathLike) -> str:
    """``$data_root/<path relative to data_root>`` (POSIX separators); the absolute path when ``path`` is not
    inside ``data_root``."""
    try:
        return f"{DATA_ROOT}/{Path(path).relative_to(data_root).as_posix()}"
    except ValueError:
        return str(Path(path).absolute())


def substitute(rows: list[dict], replacements: Mapping[str, object], source: str | os.PathLike) -> list[dict]:
    """Replace ``$name`` in every value of ``rows`` (in place), as SpeechBrain's ``load_data_csv`` does;
    DataPrepError naming the manifest and the variable when a value needs one that is not given."""
    for row in rows:
        for key, value in row.items():
            if isinstance(value, str) and "$" in value:
                try:
                    row[key] = _VARIABLE.sub(lambda m: str(replacements[m[1]]), value)
                except KeyError as err:
                    raise DataPrepError(
                        f"Manifest {source}: row {row.get('ID')} has a path relative to ${err.args[0]} "
                        f"({value!r}) but no folder was given for it: pass the corpus folder (data_folder)"
                    ) from None
    return rows


def read_manifest(path: str | os.PathLike, required: Sequence[str] = MANIFEST_FIELDS,
                  replacements: Optional[Mapping[str, object]] = None) -> list[dict]:
    """Read a manifest CSV into a list of dicts; raise DataPrepError if it is missing, empty or malformed.

    With ``replacements`` (e.g. ``{"data_root": data_folder}``) ``$data_root`` in the paths is substituted
    (:func:`substitute`); without, the rows are returned as written."""
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"Manifest not found: {path}. Run the recipe's data preparation first.")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [f for f in required if f not in header]
        if missing:
            raise DataPrepError(f"Manifest {path} lacks columns {missing} (has {header}).")
        rows = list(reader)
    if not rows:
        raise DataPrepError(f"Manifest {path} has no rows.")
    return substitute(rows, replacements, path) if replacements is not None else rows


class PrepMarker:
    """Records the options a preparation ran with, so an identical rerun is skipped (idempotent prep).

    The marker is written last, after every manifest, so a prep killed half-way is redone.
    """

    def __init__(self, folder: str | os.PathLike, name: str, options: Mapping[str, object]):
        self.path = Path(folder) / f".{name}_prepared.json"
        self.options = json.loads(json.dumps(dict(options), sort_keys=True, default=str))

    def done(self, outputs: Sequence[str | os.PathLike] = ()) -> bool:
        """True when a previous run with the same options finished and its outputs still exist."""
        if not self.path.is_file() or not all(Path(p).exists() for p in outputs):
            return False
        try:
            return json.loads(self.path.read_text()) == self.options
        except (OSError, json.JSONDecodeError):
            return False

    def mark(self) -> None:
        """Record that preparation finished with these options."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.options, sort_keys=True, indent=1))
        os.replace(tmp, self.path)


def merge_manifests(inputs: Sequence[str | os.PathLike], output: str | os.PathLike) -> int:
    """Concatenate manifests with the same columns into ``output`` (atomic); return the row count."""
    rows: list[dict] = []
    fields: Optional[list[str]] = None
    for path in inputs:
        part = read_manifest(path)
        cols = list(part[0].keys())
        if fields is None:
            fields = cols
        elif cols != fields:
            raise DataPrepError(f"cannot merge {path}: columns {cols} differ from {fields}")
        rows += part
    if fields is None:
        raise DataPrepError(f"no manifests to merge into {output}")
    return write_manifest(output, rows, fields)
