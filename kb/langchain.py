"""LangChain over our knowledge bases (optional: nothing else in the app imports this module or LangChain).

- ``KnowledgeBaseRetriever``: a ``BaseRetriever`` searching one KB, in-process on a data dir or remotely through
  a running app's REST search route (``POST /api/kb/{name}/search``), sync and async, with our top-k, threshold
  and search mode. Documents carry the chunk text and ``kb, file, file_id, page (1-based), heading, score,
  chunk_id, source`` metadata. ``add_documents`` puts LangChain documents into the KB (both ways).
- ``KBFileLoader``: our loaders (PDF with OCR, Office, HTML, markdown sections, tables...) as a ``BaseLoader``.
- ``KBChatOpenAI``: ``langchain_openai.ChatOpenAI`` keeping the ``sources`` and ``retrieval_query`` that our
  ``/v1`` adds to a ``model="kb:<name>"`` answer in ``response_metadata`` (plain ChatOpenAI drops unknown
  response fields). Imported on first use, so langchain-openai is needed only by those who use it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, PrivateAttr, SecretStr, model_validator

from kb.types import FileResult, Hit, KBError, KBNotFound

if TYPE_CHECKING:
    from kb.loaders import LoaderOptions
    from kb.service import KnowledgeBase, KnowledgeBaseManager

__all__ = ["KBFileLoader", "KnowledgeBaseRetriever", "format_documents", "open_manager"]

_managers: dict[Path, KnowledgeBaseManager] = {}
_managers_lock = threading.Lock()


def open_manager(data_dir: Path | str | None = None) -> KnowledgeBaseManager:
    """One manager per data dir and process (a manager holds the database and the in-memory index copies);
    ``None`` = the app's default data dir. It sees what other processes (a running app) commit there."""
    from configs.settings import load_settings
    from kb.service import KnowledgeBaseManager

    settings = load_settings(data_dir=Path(data_dir) if data_dir is not None else None)
    key = Path(settings.data_dir).resolve()
    with _managers_lock:
        if key not in _managers:
            settings.prepare_dirs()
            _managers[key] = KnowledgeBaseManager(settings)
        return _managers[key]


def hit_document(source: dict[str, Any]) -> Document:
    """A search hit (``Hit.source()`` / the REST search's hit) as a LangChain document."""
    meta = {k: source.get(k) for k in ("kb", "file", "file_id", "page", "heading", "score", "chunk_id",
                                       "dense_score", "keyword_score", "rerank_score")}
    meta["source"] = source.get("file")
    return Document(page_content=source["text"], metadata=meta, id=str(source.get("chunk_id")))


def _local_hit_source(hit: Hit) -> dict[str, Any]:
    return hit.source() | {"dense_score": hit.dense_score, "keyword_score": hit.keyword_score,
                           "rerank_score": hit.rerank_score}


class KnowledgeBaseRetriever(BaseRetriever):
    """Search one knowledge base: ``KnowledgeBaseRetriever(kb="manuals", data_dir="knowledge_base")`` in this
    process, or ``KnowledgeBaseRetriever(kb="manuals", url="http://127.0.0.1:7860", api_key="...")`` through a
    running app. ``top_k``, ``threshold`` and ``mode`` left unset follow the KB's own settings, then the app's."""

    kb: str
    data_dir: Path | None = None
    url: str | None = None
    api_key: SecretStr | None = None
    top_k: int | None = Field(None, ge=1, le=50)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    mode: Literal["dense", "keyword", "hybrid"] | None = None
    timeout: float = 120.0

    _client: httpx.Client | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_way(self) -> KnowledgeBaseRetriever:
        if self.url is not None and self.data_dir is not None:
            raise ValueError("give either url (a running app) or data_dir (in this process), not both")
        if self.url is not None:
            self.url = self.url.rstrip("/")
        return self

    @property
    def remote(self) -> bool:
        return self.url is not None

    # --- in process ----------------------------------------------------------------------------------
    def knowledge_base(self, create: bool = False) -> KnowledgeBase:
        """The local KB (``create``: make it if missing, with the app's default settings)."""
        manager = open_manager(self.data_dir)
        return manager.create(self.kb, exist_ok=True) if create else manager.get(self.kb)

    def _search_local(self, query: str) -> list[Document]:
        hits = self.knowledge_base().search(query, top_k=self.top_k, threshold=self.threshold, mode=self.mode)
        return [hit_document(_local_hit_source(h)) for h in hits]

    # --- remote ---------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        key = self.api_key.get_secret_value() if self.api_key else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _kb_path(self, suffix: str = "") -> str:
        return f"/api/kb/{urllib.parse.quote(self.kb, safe='')}{suffix}"

    def _sync_client(self) -> httpx.Client:
        if self._client is None:  # httpx.Client is thread-safe: one connection pool per retriever
            self._client = httpx.Client(base_url=self.url or "", headers=self._headers(), timeout=self.timeout)
        return self._client

    def _search_body(self, query: str) -> dict[str, Any]:
        body = {"query": query, "top_k": self.top_k, "threshold": self.threshold, "mode": self.mode}
        return {k: v for k, v in body.items() if v is not None}

    def _documents(self, response: httpx.Response) -> list[Document]:
        return [hit_document(h) for h in _checked(response, self.kb, self.url).json()["hits"]]

    # --- BaseRetriever --------------------------------------------------------------------------------
    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        if not query.strip():
            return []
        if not self.remote:
            return self._search_local(query)
        return self._documents(self._sync_client().post(self._kb_path("/search"), json=self._search_body(query)))

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        if not query.strip():
            return []
        if not self.remote:  # the local search is CPU work (embedding, index): keep it off the event loop
            return await asyncio.get_running_loop().run_in_executor(None, self._search_local, query)
        # A client per call: an AsyncClient is bound to the event loop it was first used on.
        async with httpx.AsyncClient(base_url=self.url or "", headers=self._headers(), timeout=self.timeout) as c:
            return self._documents(await c.post(self._kb_path("/search"), json=self._search_body(query)))

    # --- LangChain documents in -----------------------------------------------------------------------
    def add_documents(self, docs: Sequence[Document], replace: bool = False) -> list[FileResult]:
        """Index LangChain documents into this KB (created if missing) and wait for the per-source results:
        the documents of each ``metadata["source"]`` become one file, deduplicated, chunked and embedded by the
        same ingest job as an upload (see ``kb.loaders.bundle``)."""
        if not self.remote:
            return self.knowledge_base(create=True).add_documents(docs, replace=replace)
        from kb.loaders.bundle import make_bundles

        client = self._sync_client()
        if client.get(self._kb_path()).status_code == 404:
            _checked(client.post("/api/kb", json={"name": self.kb}), self.kb, self.url)
        files = [("files", (name, data, "application/json")) for name, data in make_bundles(docs)]
        if not files:
            raise KBError("no documents to add")
        params = {"replace": "true" if replace else "false"}
        response = _checked(client.post(self._kb_path("/files"), params=params, files=files), self.kb, self.url)
        job = response.json()["job"]
        # Poll the job rather than hold one request open (?wait=true) for as long as the embedding takes.
        while job["status"] not in ("done", "failed", "cancelled"):
            time.sleep(0.5)
            job = _checked(client.get(f"/api/jobs/{job['id']}"), self.kb, self.url).json()
        if job["status"] != "done":
            raise KBError(f"{self.url}: adding documents to '{self.kb}' {job['status']}: {job.get('error') or ''}")
        return [FileResult.from_dict(r) for r in job["result"] or []]


def _checked(response: httpx.Response, kb: str, url: str | None) -> httpx.Response:
    """Turn the app's error responses (``{"error": {"message"}}``) into clear exceptions."""
    if response.is_success:
        return response
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300] or response.reason_phrase
    where = f"{url}: knowledge base '{kb}'"
    if response.status_code in (401, 403):
        raise PermissionError(f"{where}: HTTP {response.status_code}: {message} (check api_key)")
    if response.status_code == 404:
        raise KBNotFound(f"{where}: {message}")
    raise KBError(f"{where}: HTTP {response.status_code}: {message}")


class KBFileLoader(BaseLoader):
    """Our loader for one file as a LangChain loader: one document per page / section / table part, with
    ``source``, ``file``, ``page`` (1-based), ``heading``, ``title`` and ``kind`` metadata. Parsing runs in a
    child process with the app's time and memory limits."""

    def __init__(self, path: Path | str, name: str | None = None, options: LoaderOptions | None = None):
        self.path = Path(path)
        self.name = name or self.path.name
        self.options = options

    def lazy_load(self) -> Iterator[Document]:
        from kb.loaders import load_file_isolated

        loaded = load_file_isolated(self.path, name=self.name, options=self.options)
        for doc in loaded.docs:
            yield Document(page_content=doc.text, metadata={
                "source": str(self.path), "file": self.name, "page": doc.page, "heading": doc.heading,
                "title": loaded.title, "kind": doc.kind})


_KB_FIELDS = ("sources", "retrieval_query")


def _keep_kb_fields(raw: Any, metadata: dict[str, Any]) -> None:
    if not isinstance(raw, dict):
        raw = raw.model_dump() if hasattr(raw, "model_dump") else {}
    for key in _KB_FIELDS:
        if raw.get(key) is not None:
            metadata[key] = raw[key]


@functools.cache
def _kb_chat_openai() -> type:
    from langchain_openai import ChatOpenAI

    class KBChatOpenAI(ChatOpenAI):  # type: ignore[misc]
        """``ChatOpenAI`` for our ``/v1``: the answer of ``model="kb:<name>"`` carries the retrieved chunks in
        ``response_metadata["sources"]`` (on the last chunk when streaming) and the search query in
        ``response_metadata["retrieval_query"]``."""

        def _convert_chunk_to_generation_chunk(self, chunk: dict, default_chunk_class: type,
                                               base_generation_info: dict | None) -> Any:
            generation = super()._convert_chunk_to_generation_chunk(chunk, default_chunk_class, base_generation_info)
            if generation is not None:
                _keep_kb_fields(chunk, generation.message.response_metadata)
            return generation

        def _create_chat_result(self, response: Any, generation_info: dict | None = None) -> Any:
            result = super()._create_chat_result(response, generation_info)
            for generation in result.generations:
                _keep_kb_fields(response, generation.message.response_metadata)
            return result

    return KBChatOpenAI


def __getattr__(name: str) -> Any:
    # PEP 562: ``from kb.langchain import KBChatOpenAI`` imports langchain-openai only then.
    if name == "KBChatOpenAI":
        return _kb_chat_openai()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def format_documents(docs: Sequence[Document]) -> str:
    """Retrieved documents as prompt context, each labelled with its file and page (for citing)."""
    parts = []
    for d in docs:
        page = d.metadata.get("page")
        parts.append(f"[{d.metadata.get('file')}{f' p.{page}' if page else ''}] {d.page_content}")
    return "\n\n".join(parts)
