"""HTTP API: OpenAI-compatible /v1, KB management under /api, ChatGLM-style migration routes, /health."""
