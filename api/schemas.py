"""Request models (with constraints) and small renderers shared by the routers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kb.types import Hit

SearchMode = Literal["dense", "keyword", "hybrid"]
ROW_ID_MAX = 2**62  # ids are 64-bit integers in the database: a larger number is a 422, not a 500


# --- OpenAI-compatible --------------------------------------------------------------------
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ... are accepted and ignored
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    # Unknown OpenAI fields (stream_options, seed, user, ...) are accepted and ignored so stock clients work.
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "model": "kb:docs", "messages": [{"role": "user", "content": "What is in the docs?"}], "max_tokens": 64,
    }]})
    model: str = Field(..., max_length=200, description="The LLM id, or 'kb:<name>' to answer from a knowledge base")
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=500)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=131072, description="Capped at the server's max_tokens setting")
    max_completion_tokens: int | None = Field(None, ge=1, le=131072)
    stop: str | list[str] | None = Field(None, description="Up to 4 stop sequences")
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported")
    knowledge_base: str | None = Field(None, max_length=200, description="KB name (alternative to model='kb:<name>')")
    top_k: int | None = Field(None, ge=1, le=50)
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    search_mode: SearchMode | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str] = Field(..., description="A string or a list of strings (at most max_embed_inputs)")
    model: str | None = Field(None, max_length=500,
                              description="A packaged embedding key, 'kb:<name>' (that KB's model), else the default")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=100000)
    # Our default model encodes questions differently from passages: remote clients (a kbchat KB whose
    # embedding_model is this server) ask for query encodings with it. Cohere's names are accepted too.
    input_type: Literal["query", "document", "passage", "search_query", "search_document"] | None = Field(
        None, description="'query' for search questions; 'document' (the default) for texts to be searched")


# --- knowledge bases ------------------------------------------------------------------------
class KBUpdate(BaseModel):
    """A KB's own settings; null search settings follow the server's, a null prompt means none."""

    search_mode: SearchMode | None = None
    hybrid_alpha: float | None = Field(None, ge=0.0, le=1.0)
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, le=50)
    prompt: str | None = Field(None, max_length=4000,
                               description="Added to this KB's answer system prompt, after the app's rules")
    visibility: Literal["private", "shared", "everyone"] | None = Field(
        None, description="Who else may read it: nobody (private; new KBs), shared_with, or every user")
    shared_with: list[str] | None = Field(None, max_length=1000, description="User names (with visibility 'shared')")


SHARING = {"visibility", "shared_with"}  # KBUpdate fields that are access, not search settings


class KBCreate(KBUpdate):
    name: str = Field(..., min_length=1, max_length=200)
    embedding_model: str | None = Field(None, max_length=500)
    chunk_size: int | None = Field(None, ge=50, le=4000, description="Recorded with the KB; changed by a rebuild")
    chunk_overlap: int | None = Field(None, ge=0, le=1000)


class SearchRequest(BaseModel):
    query: str = Field(..., min_length=1, max_length=10000)
    top_k: int | None = Field(None, ge=1, le=50)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    mode: SearchMode | None = None


# --- ChatGLM-style migration ----------------------------------------------------------------
class RoleMessage(BaseModel):
    role: str = Field(..., max_length=20)
    content: str


class LegacyChatRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "prompt": "你好", "history": [], "max_length": 256, "top_p": 0.7, "temperature": 0.95,
    }]})
    prompt: str = Field(..., min_length=1, max_length=20000)
    history: list[tuple[str, str]] | list[RoleMessage] | None = Field(
        None, max_length=200, description="[[question, answer], ...] (ChatGLM) or role/content messages")
    max_length: int | None = Field(None, ge=1, le=131072, description="Caps new tokens (and the server's max_tokens)")
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    knowledge_base: str | None = Field(None, max_length=200)
    top_k: int | None = Field(None, ge=1, le=50)
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)


def history_pairs(history: list[tuple[str, str]] | list[RoleMessage] | None) -> list[tuple[str, str]]:
    """ChatGLM pairs as they are; role/content messages paired user -> following assistant."""
    if not history:
        return []
    if isinstance(history[0], RoleMessage):
        pairs: list[tuple[str, str]] = []
        pending: str | None = None
        for m in history:
            assert isinstance(m, RoleMessage)
            if m.role == "user":
                if pending is not None:
                    pairs.append((pending, ""))
                pending = m.content
            elif m.role == "assistant":
                pairs.append((pending or "", m.content))
                pending = None
        if pending is not None:
            pairs.append((pending, ""))
        return pairs
    return [(str(q), str(a)) for q, a in history]  # type: ignore[misc]


def hit_dict(hit: Hit) -> dict[str, Any]:
    return hit.source() | {"dense_score": hit.dense_score,
                               "keyword_score": hit.keyword_score, "rerank_score": hit.rerank_score}


# --- conversations ----------------------------------------------------------------------------
KBNames = list[str]


class ConversationCreate(BaseModel):
    title: str = Field("", max_length=200, description="Empty: named after its first question")
    knowledge_bases: KBNames = Field(default_factory=list, max_length=16, description="[] = plain LLM chat")


class ConversationUpdate(BaseModel):
    title: str | None = Field(None, max_length=200)
    knowledge_bases: KBNames | None = Field(None, max_length=16)


class MessageCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"content": "什么是流水线并行？",
                                                               "knowledge_bases": ["docs"]}]})
    content: str = Field(..., min_length=1)
    knowledge_bases: KBNames | None = Field(None, max_length=16,
                                            description="Search these KBs from now on (default: the conversation's)")
    replace_from: str | None = Field(None, max_length=32, description="Remove this message and all after it first "
                                     "(re-ask an edited question, or regenerate the last answer)")
    top_k: int | None = Field(None, ge=1, le=50)
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    search_mode: SearchMode | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=131072, description="Capped at the server's max_tokens setting")


class FeedbackCreate(BaseModel):
    rating: Literal[1, -1]
    comment: str = Field("", max_length=4000)
