"""What every embedder is: the interface the cascade, the index and training embed through.

Kept apart from the implementations so each of them (``cca.onnx_minilm``,
``cca.static_embeddings``, the OpenAI client in ``cca.embeddings``) imports only this, and
``cca.embeddings`` imports them all to choose one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

ProgressFn = Callable[[int], None]


class Embedder(Protocol):
    model_id: str
    dim: int
    cost_per_1k_tokens_usd: float

    def embed(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> int: ...


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
