"""Loading HyperPyYAML files with single inheritance (``extends: base.yaml``) and strict keys.

A method file (e.g. ``hparams/fsdd/dld.yaml``) holds ``extends: base.yaml`` and only the keys it changes;
the base defines every key. A key that the base does not define is an error naming the file and key,
so a typo in a YAML or on the command line never passes silently. A file that adds keys on purpose (a
corpus layer over a model base) lists them under ``new_keys: [...]``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml

EXTENDS_KEY = "extends"
NEW_KEYS_KEY = "new_keys"


class HparamsError(ValueError):
    """A problem in a hyperparameter file or override; the message names the file and key."""


def _yaml() -> ruamel.yaml.YAML:
    return ruamel.yaml.YAML()


def _unknown_keys(base: Mapping, child: Mapping, prefix: str = "") -> list[str]:
    """Top-level (and nested plain-mapping) keys of ``child`` absent from ``base``; an empty mapping in the
    base (e.g. ``test_csvs: {}``) is open: any key may go in it."""
    unknown = []
    for key, value in child.items():
        if key not in base:
            unknown.append(prefix + str(key))
        elif isinstance(value, Mapping) and isinstance(base[key], Mapping) and len(base[key]) \
                and not _tagged(value) and not _tagged(base[key]):
            unknown += _unknown_keys(base[key], value, prefix + f"{key}.")
    return unknown


def _tagged(node) -> bool:
    tag = getattr(node, "tag", None)
    return bool(getattr(tag, "value", None) if tag is not None and not isinstance(tag, str) else tag)


def _merge(base, child) -> None:
    """Update ``base`` with ``child`` in place: plain mappings merge key by key; anything else (values,
    lists, ``!new:`` objects) is replaced whole, so an override never mixes two objects' arguments."""
    for key, value in child.items():
        old = base.get(key) if key in base else None
        if isinstance(old, Mapping) and isinstance(value, Mapping) and not _tagged(old) and not _tagged(value):
            _merge(old, value)
        else:
            comments = getattr(base, "ca", None)
            if comments is not None:  # a base comment on a replaced key can break ruamel's layout
                comments.items.pop(key, None)
            base[key] = value


def _strip_comments(node) -> None:
    """Drop ruamel's comment tokens in place: a comment after a tag (``- !new:X  # note``) can otherwise
    be dumped inside the node and silently turn an object into a dict."""
    comments = getattr(node, "ca", None)
    if comments is not None:
        comments.items.clear()
        comments.comment = None
        comments.end = []
    children = node.values() if isinstance(node, Mapping) else node if isinstance(node, list) else []
    for child in children:
        _strip_comments(child)


def merged_tree(path: Union[str, os.PathLike]):
    """Load ``path`` as a ruamel tree (tags kept), applying its ``extends`` chain."""
    path = Path(path)
    if not path.is_file():
        raise HparamsError(f"Hyperparameter file not found: {path}")
    try:
        tree = _yaml().load(path.read_text())
    except ruamel.yaml.YAMLError as err:
        raise HparamsError(f"{path} is not valid YAML: {err}") from err
    if tree is None:
        raise HparamsError(f"{path} is empty")
    parent = tree.pop(EXTENDS_KEY, None) if hasattr(tree, "pop") else None
    if parent is None:
        return tree
    declared = set(tree.pop(NEW_KEYS_KEY, None) or [])
    base = merged_tree(path.parent / str(parent))
    unknown = [k for k in _unknown_keys(base, tree) if k not in declared]
    if unknown:
        raise HparamsError(
            f"{path}: keys {unknown} are not defined in its base {path.parent / str(parent)}; "
            f"fix the spelling, add the key (with a default) to the base file, or list it under {NEW_KEYS_KEY}"
        )
    _merge(base, tree)
    return base


def _parse_overrides(overrides):
    """Overrides as a mapping; YAML text (as SpeechBrain builds it from --key=value) is parsed."""
    if not isinstance(overrides, str):
        return overrides
    if not overrides.strip():
        return None
    try:
        return _yaml().load(overrides)
    except ruamel.yaml.YAMLError as err:
        raise HparamsError(f"invalid command-line overrides (a key given twice, or bad YAML): {err}") from err


def load_hparams(path: Union[str, os.PathLike], overrides: Optional[Union[str, Mapping]] = None) -> dict:
    """Resolve ``path`` (with its ``extends`` chain) and command-line ``overrides`` into a hparams dict.

    Overrides must name keys that exist; an unknown key raises :class:`HparamsError` naming it.
    """
    tree = merged_tree(path)
    overrides = _parse_overrides(overrides)
    if overrides:
        unknown = _unknown_keys(tree, overrides)
        if unknown:
            raise HparamsError(
                f"override keys {unknown} are not defined in {path} (or its base); check the spelling"
            )
    _strip_comments(tree)
    stream = io.StringIO()
    _yaml().dump(tree, stream)
    stream.seek(0)
    stream.name = str(Path(path).resolve())  # lets !include find files next to the hparams file
    try:
        return load_hyperpyyaml(stream, overrides or None)
    except Exception as err:
        raise HparamsError(f"could not build the objects in {path}: {type(err).__name__}: {err}") from err


def resolved_yaml_text(path: Union[str, os.PathLike], overrides: Optional[Union[str, Mapping]] = None) -> str:
    """The merged YAML (extends chain + overrides applied, tags kept) as text, to save next to results."""
    tree = merged_tree(path)
    overrides = _parse_overrides(overrides)
    if overrides:
        _merge(tree, overrides)
    stream = io.StringIO()
    _yaml().dump(tree, stream)
    return stream.getvalue()
