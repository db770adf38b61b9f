"""requirements.txt and pyproject.toml agree; every third-party import of the package is declared; every
declared dependency is used."""

import ast
import importlib.metadata as md
import re
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

#: declared dependencies used without a direct import, and how
USED_INDIRECTLY = {
    "sentencepiece": "speechbrain.tokenizers.SentencePiece (dld_brain.dataio.train_tokenizer)",
    "onnx": "torch.onnx.export (dld_brain.export)",
    "flashlight-text": "torchaudio.models.decoder.ctc_decoder (dld_brain.decoding)",
}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def declared() -> dict:
    """{name: Requirement} of the core dependencies and every extra (self-references left out)."""
    project = pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    out = {}
    for text in reqs:
        req = Requirement(text)
        if canonicalize_name(req.name) != "dld-brain":
            out.setdefault(canonicalize_name(req.name), req)
    return out


def requirements() -> dict:
    out = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def test_requirements_match_pyproject():
    """Same package set; each requirements.txt line is the pyproject specifier or a pin it allows."""
    dec, req = declared(), requirements()
    assert sorted(req) == sorted(dec), (
        f"only in requirements.txt: {sorted(set(req) - set(dec))}, only in pyproject: {sorted(set(dec) - set(req))}")
    for name, r in req.items():
        if str(r.specifier) == str(dec[name].specifier):
            continue
        pins = [s.version for s in r.specifier if s.operator == "=="]
        assert pins and dec[name].specifier.contains(pins[0]), \
            f"{name}: requirements.txt {r.specifier} vs pyproject {dec[name].specifier}"


def test_requirements_extras_are_the_documented_ones():
    extras = pyproject()["project"]["optional-dependencies"]
    assert {"wavlm", "whisper", "export", "test"} <= set(extras)
    assert any(canonicalize_name(Requirement(r).name) == "jiwer" for r in pyproject()["project"]["dependencies"])


def third_party_imports(*folders) -> dict:
    """{top-level module: first file importing it} over the Python files of ``folders``."""
    found = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "dld_brain":
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_requirements_every_import_is_declared_and_every_dependency_used():
    dists = md.packages_distributions()
    dec = declared()
    used = set()
    for module, where in third_party_imports("dld_brain").items():
        names = {canonicalize_name(d) for d in dists.get(module, [module])}
        assert names & set(dec), f"{where} imports {module} ({sorted(names)}) but pyproject does not declare it"
        used |= names
    for module in third_party_imports("recipes", "tests", "benchmarks"):
        used |= {canonicalize_name(d) for d in dists.get(module, [module])}
    unused = set(dec) - used - set(USED_INDIRECTLY)
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_requirements_setup_script_installs_requirements_and_package():
    """scripts/setup.sh (the README's set-up command) installs requirements.txt (hence pytest) and the package."""
    text = (REPO / "scripts" / "setup.sh").read_text()
    assert re.search(r"pip install[^\n]*-r requirements\.txt", text)
    assert re.search(r"pip install[^\n]*-e \.", text)
