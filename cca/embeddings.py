"""Sentence embeddings behind one interface: offline int8 ONNX MiniLM by default, OpenAI by config.

Which embedder a setting or a trained model means is decided here; the embedders themselves
live in ``cca.onnx_minilm`` (the contextual MiniLM), ``cca.static_embeddings`` (the static
table distilled from it) and below (any OpenAI-compatible endpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from cca.embedder import Embedder, ProgressFn, normalise
from cca.errors import ConfigError, StateError
from cca.onnx_minilm import OnnxMiniLM
from cca.onnx_quantize import MODEL_ID as DQ8_ID
from cca.settings import Settings
from cca.static_embeddings import StaticMiniLM

__all__ = ["Embedder", "OnnxMiniLM", "OpenAIEmbedder", "ProgressFn", "StaticMiniLM",
           "embedder_for_model", "get_deep_embedder", "get_embedder"]


class OpenAIEmbedder:
    """Any OpenAI-compatible embeddings endpoint (OpenAI, Azure OpenAI, vLLM, llama.cpp)."""

    def __init__(self, settings: Settings, client: object | None = None) -> None:
        # Deferred: the openai client is a heavy import, needed only with this provider.
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
        vectors = normalise(np.vstack(chunks)) if chunks else np.zeros((0, self.dim), np.float32)
        self.dim = vectors.shape[1] if len(vectors) else self.dim
        return vectors


@lru_cache(maxsize=4)
def _onnx(max_tokens: int, batch_size: int, threads: int,
          quantized_dir: Path | None = None) -> OnnxMiniLM:
    return OnnxMiniLM(max_tokens=max_tokens, batch_size=batch_size, threads=threads,
                      quantized_dir=quantized_dir)


@lru_cache(maxsize=4)
def _static(cache_dir: Path, teacher: OnnxMiniLM) -> Embedder:
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
