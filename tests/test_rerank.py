"""The optional cross-encoder stage, with a real CrossEncoder directory whose ranking is known.

The cross-encoder is a real BERT sequence classifier loaded by sentence-transformers through the
app's ``rerank_model`` setting, but with hand-set weights: its relevance is a closed-form,
increasing function of how dense one marker character is in the (query, passage) pair. So the
order the rerank stage must produce can be computed here, independently of the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import DOCUMENTS, make_settings
from kb.service import KnowledgeBaseManager
from kb.types import Hit, KBError

QUERY = "模型并行"
MARKER = "型"  # the only thing the cross-encoder cares about


def build_marker_cross_encoder(path: Path) -> Callable[[str], float]:
    """Save a CrossEncoder to ``path`` and return the score it must give a passage for QUERY.

    Weights (hidden size 4, one layer): every token embeds as n = [-1, 1, 1, -1], the marker as
    m = [1, -1, 1, -1] (both already LayerNorm-ed, position/type embeddings are 0). Query and key
    weights are 0, so [CLS] attends uniformly to all real tokens; value and output projections are
    identities, so [CLS] becomes LayerNorm(mean + n) = LayerNorm([2p-2, 2-2p, 2, -2]) with p the
    marker share of the pair's tokens. The feed-forward block is 0 (a residual identity), the pooler
    is tanh(0.5 x) and the classifier reads dimension 0: score = tanh(0.5 * (2p-2) / sqrt(((2-2p)^2 + 4) / 2)),
    strictly increasing in p.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path.mkdir(parents=True)
    chars = sorted(set("".join(p.read_text(encoding="utf-8") for p in (DOCUMENTS / "md_kb_zh").glob("*.md"))))
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(c for c in chars if not c.isspace())]),
                     encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(vocab), model_max_length=512)  # transformers 5: `vocab`, not `vocab_file`
    marker_id = tok.convert_tokens_to_ids(MARKER)
    assert marker_id != tok.unk_token_id
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=4, num_labels=1, max_position_embeddings=512)).eval()
    eye = torch.eye(4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0 if "LayerNorm.weight" in name else 0.0)
        model.bert.embeddings.word_embeddings.weight[:] = torch.tensor([-1.0, 1.0, 1.0, -1.0])
        model.bert.embeddings.word_embeddings.weight[marker_id] = torch.tensor([1.0, -1.0, 1.0, -1.0])
        layer = model.bert.encoder.layer[0]
        layer.attention.self.value.weight.copy_(eye)
        layer.attention.output.dense.weight.copy_(eye)
        model.bert.pooler.dense.weight.copy_(0.5 * eye)
        model.classifier.weight[0, 0] = 1.0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    # Saved with an identity activation, so rerank_score is the logit itself (the default would be a sigmoid).
    CrossEncoder(str(path), device="cpu", local_files_only=True, activation_fn=torch.nn.Identity()).save(str(path))

    def known_score(text: str) -> float:
        ids = tok(QUERY, text, truncation=True)["input_ids"]
        p = ids.count(marker_id) / len(ids)
        return math.tanh(0.5 * (2 * p - 2) / math.sqrt(((2 - 2 * p) ** 2 + 4) / 2))

    return known_score


def test_rerank_reorders_but_keeps_score_meaning(tmp_path: Path) -> None:
    known_score = build_marker_cross_encoder(tmp_path / "ce")
    kb = KnowledgeBaseManager(make_settings(tmp_path / "data")).create("r")
    kb.ingest(sorted((DOCUMENTS / "md_kb_zh").glob("Langchain-Chatchat__*.md")))  # the Chinese ones: quick to embed
    top_k = 8
    # Without a reranker: every candidate, in retrieval order, with its retrieval score.
    retrieved = kb.search(QUERY, top_k=50, threshold=0.0)
    # kb.retrieval hands the reranker the best max(4 * top_k, 20) candidates by retrieval score.
    window = retrieved[:max(4 * top_k, 20)]
    assert len({known_score(h.text) for h in window}) == len(window)  # no ties: the expected order is definite
    # A threshold computed from the data (the window's median retrieval score), so it really cuts.
    threshold = window[len(window) // 2].score

    reranked = (KnowledgeBaseManager(make_settings(tmp_path / "data", rerank_model=str(tmp_path / "ce")))
                .get("r").search(QUERY, top_k=top_k, threshold=threshold))

    by_model = sorted(window, key=lambda h: known_score(h.text), reverse=True)
    expected = [h.chunk_id for h in by_model if h.score >= threshold][:top_k]
    assert [h.chunk_id for h in reranked] == expected
    # The stage must really have reordered, and the threshold must really have dropped some of the
    # model's favourites: otherwise the two assertions above would prove nothing.
    assert expected != [h.chunk_id for h in retrieved if h.score >= threshold][:top_k]
    assert any(h.score < threshold for h in by_model[:top_k])

    # The score keeps its one meaning (kb/rerank.py, README "The score and the threshold"): it is the
    # retrieval score, with the same dense and keyword parts; the model's relevance is rerank_score.
    by_id: dict[int, Hit] = {h.chunk_id: h for h in retrieved}
    for h in reranked:
        plain = by_id[h.chunk_id]
        assert (h.score, h.dense_score, h.keyword_score) == (plain.score, plain.dense_score, plain.keyword_score)
        assert h.score >= threshold
        assert h.rerank_score == pytest.approx(known_score(h.text), abs=1e-5)


def test_missing_rerank_dir_is_a_clear_error(tmp_path: Path) -> None:
    mgr = KnowledgeBaseManager(make_settings(tmp_path / "data", rerank_model=str(tmp_path / "nope")))
    kb = mgr.create("r")
    with pytest.raises(KBError, match="rerank model"):
        kb.search("x")
