"""`python -m kb` as a user runs it: a real subprocess, real files, real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from configs.settings import load_settings
from conftest import DOCUMENTS, REPO, RETRIEVAL


def kb_cli(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "kb", *args, "--data-dir", str(data_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_ingest_folder_search_and_files(tmp_path):
    data = tmp_path / "data"
    broken = tmp_path / "extra"
    broken.mkdir()
    (broken / "blank.txt").write_text("  \n\n ", encoding="utf-8")
    out = kb_cli("ingest", "--kb", "docs", str(DOCUMENTS / "md_kb_zh"), str(broken), data_dir=data).stdout
    lines = out.strip().splitlines()
    assert sum("indexed with" in line for line in lines) >= 5
    assert any(line.startswith("blank.txt: failed: empty") for line in lines)
    assert lines[-1].startswith("summary: ") and "1 failed" in lines[-1]

    again = kb_cli("ingest", "--kb", "docs", str(DOCUMENTS / "md_kb_zh"), data_dir=data).stdout
    assert "skipped, same content as" in again and "0 indexed" in again

    hits = json.loads(kb_cli("search", "--kb", "docs", "张量并行是什么", "--json", "--top-k", "3",
                             "--threshold", "0", data_dir=data).stdout)
    assert len(hits) == 3 and hits[0]["file"] == "Langchain-Chatchat__分布式训练技术原理.md"
    assert all(set(h) >= {"file", "page", "heading", "score", "text"} for h in hits)
    files = kb_cli("files", "--kb", "docs", data_dir=data).stdout
    assert "failed" in files and "indexed" in files


def test_errors_are_one_line_not_tracebacks(tmp_path):
    data = tmp_path / "data"
    missing = kb_cli("ingest", "--kb", "x", str(tmp_path / "nope.pdf"), data_dir=data, check=False)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no such file")
    unknown = kb_cli("search", "--kb", "absent", "q", data_dir=data, check=False)
    assert unknown.returncode == 2 and "does not exist" in unknown.stderr
    bad = kb_cli("create", "../escape", data_dir=data, check=False)
    assert bad.returncode == 2 and "invalid knowledge base name" in bad.stderr


def test_set_changes_only_the_given_kb_settings_and_empty_resets(tmp_path):
    data = tmp_path / "data"
    kb_cli("create", "hr", "--mode", "keyword", data_dir=data)
    out = json.loads(kb_cli("set", "hr", "--prompt", "用“您”称呼用户。", "--top-k", "7", data_dir=data).stdout)
    assert (out["prompt"], out["top_k"], out["search_mode"]) == ("用“您”称呼用户。", 7, "keyword")
    out = json.loads(kb_cli("set", "hr", "--prompt", "", "--mode", "", data_dir=data).stdout)
    assert (out["prompt"], out["top_k"], out["search_mode"]) == ("", 7, "hybrid")  # mode follows the app again
    bad = kb_cli("set", "hr", "--top-k", "0", data_dir=data, check=False)
    assert bad.returncode == 2 and "top_k must be between 1 and 50" in bad.stderr
    nothing = kb_cli("set", "hr", data_dir=data, check=False)
    assert nothing.returncode == 2 and "nothing to set" in nothing.stderr


def test_eval_prints_metrics_json_on_cmrc(tmp_path):
    proc = kb_cli("eval", str(RETRIEVAL / "cmrc2018-trial"), "--split", "test", "--limit-queries", "200",
                  "--json", data_dir=tmp_path / "data")
    m = json.loads(proc.stdout)
    assert set(m) >= {"ndcg@10", "recall@10", "mrr@10", "queries", "index_seconds"}
    assert m["queries"] == 200
    # cmrc2018 is lexically easy: anything well below this means retrieval is broken.
    assert m["ndcg@10"] > 0.85 and m["recall@10"] > 0.9


def test_terminal_chat_answers_and_exits(tmp_path):
    """The cli_demo-style chat: a question in, a streamed answer out, 'exit' quits."""
    env = dict(os.environ, PYTHONPATH=str(REPO), KBCHAT_MAX_TOKENS="16", KBCHAT_CONDENSE_QUESTION="false")
    proc = subprocess.run(
        [sys.executable, "-m", "kb", "chat", "--llm-model", "smollm2-135m", "--data-dir", str(tmp_path / "d")],
        input="Say hello.\nclear\nexit\n", cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    answer = proc.stdout.split("assistant> ", 1)[1].split("user>", 1)[0]
    assert answer.strip()


def test_models_lists_packaged_and_configured_models_with_measured_speed(tmp_path):
    listing = json.loads(kb_cli("models", "--json", data_dir=tmp_path).stdout)
    embedders = {r["model"]: r for r in listing["embedding"]}
    assert {"minilm", "use-multilingual", "minilm+use"} <= set(embedders)
    assert all(r["installed"] for r in embedders.values() if "package" in r)
    assert [r["model"] for r in listing["embedding"] if r["default"]] == [load_settings().embedding_model]
    assert "zh_chunks_per_s" not in embedders["use-multilingual"]  # nothing measured yet
    llms = {r["model"]: r for r in listing["llm"]}
    assert llms["smollm2-135m"]["installed"] is True

    kb_cli("models", "--measure", "use-multilingual", "smollm2-135m", "--llm-model", "smollm2-135m",
           "--json", data_dir=tmp_path)
    # The measurement is kept: a plain listing shows it without measuring again.
    text = kb_cli("models", "--llm-model", "smollm2-135m", data_dir=tmp_path).stdout
    line = next(ln for ln in text.splitlines() if " use-multilingual " in ln)
    zh = float(line.split("zh")[1].split("/s")[0])
    en = float(line.split("en")[1].split("/s")[0])
    assert zh > 1 and en > 1 and "measured" in line
    smol = next(ln for ln in text.splitlines() if " smollm2-135m " in ln)
    assert float(smol.split()[2 if smol.startswith(" *") else 1]) > 0, smol  # tok/s, measured here
    assert "speed not measured" in next(ln for ln in text.splitlines() if " minilm " in ln)
