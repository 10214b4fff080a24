"""Knowledge bases: loading, splitting, embedding, stores, retrieval (see kb/service.py)."""
