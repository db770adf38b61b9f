"""Loading HyperPyYAML files with single inheritance (``extends: base.yaml``) and strict keys.

A method file (e.g. ``hparams/fsdd/dld.yaml``) holds ``extends: base.yaml`` and only the keys it changes;
the base defines every key. A key that the base does not define is an error naming the file and key,
so a typo in a YAML or on the command line never passes silently.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml
from hyperpyyaml.core import recursive_update

EXTENDS_KEY = "extends"


class HparamsError(ValueError):
    """A problem in a hyperparameter file or override; the message names the file and key."""


def _yaml() -> ruamel.yaml.YAML:
    return ruamel.yaml.YAML()


def _unknown_keys(base: Mapping, child: Mapping, prefix: str = "") -> list[str]:
    """Top-level (and nested plain-mapping) keys of ``child`` absent from ``base``."""
    unknown = []
    for key, value in child.items():
        if key not in base:
            unknown.append(prefix + str(key))
        elif isinstance(value, Mapping) and isinstance(base[key], Mapping) and not getattr(value, "tag", None):
            unknown += _unknown_keys(base[key], value, prefix + f"{key}.")
    return unknown


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
    base = merged_tree(path.parent / str(parent))
    unknown = _unknown_keys(base, tree)
    if unknown:
        raise HparamsError(
            f"{path}: keys {unknown} are not defined in its base {path.parent / str(parent)}; "
            "fix the spelling or add the key (with a default) to the base file"
        )
    recursive_update(base, tree)
    return base


def load_hparams(path: Union[str, os.PathLike], overrides: Optional[Union[str, Mapping]] = None) -> dict:
    """Resolve ``path`` (with its ``extends`` chain) and command-line ``overrides`` into a hparams dict.

    Overrides must name keys that exist; an unknown key raises :class:`HparamsError` naming it.
    """
    tree = merged_tree(path)
    if isinstance(overrides, str):
        overrides = _yaml().load(overrides) if overrides.strip() else None
    if overrides:
        unknown = _unknown_keys(tree, overrides)
        if unknown:
            raise HparamsError(
                f"override keys {unknown} are not defined in {path} (or its base); check the spelling"
            )
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
    if isinstance(overrides, str):
        overrides = _yaml().load(overrides) if overrides.strip() else None
    if overrides:
        recursive_update(tree, overrides)
    stream = io.StringIO()
    _yaml().dump(tree, stream)
    return stream.getvalue()
