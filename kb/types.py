"""Plain data passed between the pipeline stages (loaders -> splitter -> store -> retrieval)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


class KBError(Exception):
    """A user-facing error: the message is shown as is in the UI, CLI and API."""

    status_code = 400


class KBNotFound(KBError):
    status_code = 404


class KBConflict(KBError):
    status_code = 409


class Busy(Exception):
    """The server is at a configured capacity; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 10):
        super().__init__(message)
        self.retry_after = retry_after


class LoadError(KBError):
    """A file could not be turned into text; ``reason`` is short and user-facing
    (e.g. "encrypted: password required", "no text layer", "not a PDF", "empty")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Document:
    """One unit of loaded text: a PDF page, a markdown section, a table row group, ..."""

    text: str
    page: int | None = None  # 1-based page (PDF, DOCX page breaks, slide number)
    heading: str | None = None  # nearest heading / sheet / slide title
    kind: Literal["text", "table"] = "text"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedFile:
    docs: list[Document]
    title: str | None = None  # document title when the format has one
    pages: int | None = None
    ocr_pages: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Chunk:
    id: int  # FAISS id, unique within a KB
    file_id: str  # sha256 of the source file
    text: str  # what the user sees and the LLM reads
    page: int | None = None
    heading: str | None = None
    ordinal: int = 0  # position within its file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Hit:
    """A retrieved chunk. ``score`` is in [0, 1], higher is more similar, in every mode."""

    text: str
    score: float
    file: str  # display name
    file_id: str
    page: int | None
    heading: str | None
    chunk_id: int
    dense_score: float | None = None
    keyword_score: float | None = None
    rerank_score: float | None = None
    kb: str = ""  # the knowledge base it came from (a chat may search several)

    def source(self) -> dict[str, Any]:
        """What a chat answer cites: where the chunk is, its score and its text (the API's ``sources``)."""
        return {"kb": self.kb, "file": self.file, "file_id": self.file_id, "page": self.page,
                "score": round(float(self.score), 4), "text": self.text, "heading": self.heading,
                "chunk_id": self.chunk_id}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FileStatus = Literal["indexed", "duplicate", "replaced", "failed"]


@dataclass
class FileResult:
    """Outcome of ingesting one file, shown per file in the UI, CLI and API."""

    name: str
    status: FileStatus
    chunks: int = 0
    file_id: str | None = None
    error: str | None = None
    pages: int | None = None
    ocr_pages: list[int] = field(default_factory=list)
    seconds: float = 0.0
    renamed_from: str | None = None  # indexed beside an older, different file that had this name
    duplicate_of: str | None = None  # the file already in the KB with these exact bytes
    kept_old: bool = False  # a rebuild could not re-read it and kept its previous chunks

    def message(self) -> str:
        if self.status == "failed":
            return f"{self.name}: failed: {self.error}"
        if self.status == "duplicate":
            return f"{self.name}: skipped, same content as '{self.duplicate_of or '?'}' already in the KB"
        extra = f", OCR on page(s) {', '.join(map(str, self.ocr_pages))}" if self.ocr_pages else ""
        verb = "replaced old version, indexed" if self.status == "replaced" else "indexed"
        if self.renamed_from:
            return (f"{self.renamed_from}: a different file already has this name, so this one was kept as "
                    f"'{self.name}' and {verb} with {self.chunks} chunks{extra} (replace to overwrite instead)")
        return f"{self.name}: {verb} with {self.chunks} chunks{extra} ({self.seconds:.1f}s)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"message": self.message()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileResult:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
