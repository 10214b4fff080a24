"""The optional cross-encoder stage, with a real (tiny, locally built) CrossEncoder directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DOCUMENTS, make_settings
from kb.service import KnowledgeBaseManager
from kb.types import KBError


def build_tiny_cross_encoder(path: Path) -> Path:
    """A randomly initialised BERT cross-encoder saved the way sentence-transformers saves one:
    no hub needed, and its scores are arbitrary but deterministic."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = path / "vocab.txt"
    path.mkdir(parents=True)
    chars = sorted(set("".join(p.read_text(encoding="utf-8") for p in (DOCUMENTS / "md_kb_zh").glob("*.md"))))
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]), encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=1, max_position_embeddings=512))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    CrossEncoder(str(path), device="cpu", local_files_only=True).save(str(path))
    return path


def test_rerank_reorders_but_keeps_score_meaning(tmp_path):
    model_dir = build_tiny_cross_encoder(tmp_path / "ce")
    plain = KnowledgeBaseManager(make_settings(tmp_path / "data"))
    kb = plain.create("r")
    kb.ingest(sorted((DOCUMENTS / "md_kb_zh").glob("*.md")))
    before = kb.search("模型并行", top_k=8, threshold=0.0)

    reranked_mgr = KnowledgeBaseManager(make_settings(tmp_path / "data", rerank_model=str(model_dir)))
    after = reranked_mgr.get("r").search("模型并行", top_k=8, threshold=0.0)
    assert after and all(h.rerank_score is not None for h in after)
    assert [h.rerank_score for h in after] == sorted((h.rerank_score for h in after), reverse=True)
    # Same candidates, same scores (the score keeps its meaning); only the order may change.
    by_id = {h.chunk_id: h.score for h in before}
    assert all(by_id.get(h.chunk_id, h.score) == h.score for h in after)


def test_missing_rerank_dir_is_a_clear_error(tmp_path):
    mgr = KnowledgeBaseManager(make_settings(tmp_path / "data", rerank_model=str(tmp_path / "nope")))
    kb = mgr.create("r")
    with pytest.raises(KBError, match="rerank model"):
        kb.search("x")
