"""LLM layer: backends (llama.cpp, transformers, OpenAI-compatible), packaged models, prompts and chat flow."""
