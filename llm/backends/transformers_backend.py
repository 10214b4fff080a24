"""Local Hugging Face model directory (Qwen, ChatGLM, ... with a chat template), generated with transformers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm.backends.base import GenParams, LLMError, Message, check_messages


def has_custom_code(model_dir: Path) -> bool:
    """True when the dir ships its own modelling/tokenizer code (ChatGLM style ``auto_map``)."""
    for name in ("config.json", "tokenizer_config.json"):
        f = model_dir / name
        if f.is_file():
            try:
                if "auto_map" in json.loads(f.read_text(encoding="utf-8")):
                    return True
            except (OSError, ValueError):
                pass
    return any(model_dir.glob("*.py"))


class TransformersBackend:
    def __init__(self, model_dir: Path, n_threads: int = 2, trust_remote_code: bool = False, name: str | None = None):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local dir only; never reach for a hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise LLMError(f"not a Hugging Face model directory (no config.json): {self.model_dir}")
        if has_custom_code(self.model_dir) and not trust_remote_code:
            # Running a model's own Python is code execution; it has to be switched on deliberately.
            raise LLMError(f"{self.model_dir} ships custom model code; it only loads with trust_remote_code enabled")
        self.name = name or self.model_dir.name
        self.n_threads = n_threads
        torch.set_num_threads(n_threads)
        try:
            self._tok = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=trust_remote_code,
                                                      local_files_only=True)
            self._model = AutoModelForCausalLM.from_pretrained(
                self.model_dir, trust_remote_code=trust_remote_code, local_files_only=True, dtype=torch.float32
            )
        except (OSError, ValueError) as e:
            raise LLMError(f"cannot load the model in {self.model_dir}: {e}") from e
        self._model.eval()
        if not getattr(self._tok, "chat_template", None):
            raise LLMError(f"{self.model_dir} has no chat template; use an instruct/chat model")
        self.n_ctx = int(getattr(self._model.config, "max_position_embeddings", 0) or 0) or None
        self._lock = threading.Lock()  # one generation at a time: CPU cores are the bottleneck anyway

    def count_tokens(self, text: str) -> int:
        return len(self._tok(text, add_special_tokens=False)["input_ids"])

    def info(self) -> dict[str, Any]:
        return {"backend": "transformers", "model": self.name, "path": str(self.model_dir), "n_ctx": self.n_ctx}

    def stream(
        self, messages: list[Message], params: GenParams, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        params.validate()
        check_messages(messages)
        ids = self._tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        n_prompt = int(ids["input_ids"].shape[-1])
        if self.n_ctx and n_prompt >= self.n_ctx:
            raise LLMError(f"the prompt is too long for the model: {n_prompt} tokens, but the context window is "
                           f"{self.n_ctx} tokens; use fewer retrieved chunks (top_k) or history turns")
        return self._generate(ids, params, cancel)

    def _generate(self, ids: Any, params: GenParams, cancel: threading.Event | None) -> Iterator[str]:
        from transformers import (
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        stop = threading.Event()

        class _Halt(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return stop.is_set() or (cancel is not None and cancel.is_set())

        streamer = TextIteratorStreamer(self._tok, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = dict(
            ids,
            streamer=streamer,
            max_new_tokens=params.max_tokens,
            stopping_criteria=StoppingCriteriaList([_Halt()]),
            pad_token_id=self._tok.pad_token_id if self._tok.pad_token_id is not None else self._tok.eos_token_id,
        )
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p or 1.0)
        else:
            kwargs.update(do_sample=False)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self._tok)
        errors: list[BaseException] = []
        started = threading.Event()

        def run() -> None:
            with self._lock:
                started.set()
                if stop.is_set() or (cancel is not None and cancel.is_set()):
                    streamer.end()
                    return
                try:
                    import torch

                    with torch.inference_mode():
                        self._model.generate(**kwargs)
                except Exception as e:  # re-raised in the consumer as LLMError
                    errors.append(e)
                    streamer.end()  # unblock the consumer

        worker = threading.Thread(target=run, daemon=True, name="transformers-gen")
        worker.start()
        try:
            for text in streamer:
                if cancel is not None and cancel.is_set():
                    break
                if text:
                    yield text
            if errors:
                raise LLMError(f"transformers generation failed: {type(errors[0]).__name__}: {errors[0]}")
        finally:
            stop.set()  # the StoppingCriteria ends generate() at the next token; the worker then frees the lock
            if started.is_set():  # wait for it (not when still queued behind other users)
                worker.join(timeout=60)
