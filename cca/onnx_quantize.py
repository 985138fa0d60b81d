"""The deep MiniLM tier as a dynamically quantised int8 model, derived once per home.

The packaged model stores its weights as int8 but computes in float32: onnxruntime folds the
weights back to float32 at load, so every MatMul runs in float32. Dynamic quantisation
(per-channel int8 weights, activations quantised per call) runs them as integer products:
about half the CPU a ticket, with embeddings close to the packaged model's and the same
Banking77 accuracy (docs/models.md, benchmarks/RESULTS.md). Nothing is downloaded: the
input is the installed model, checked by sha256; the output is cached beside the static
table with the hashes it came from.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

QUANTIZE_VERSION = 1
MODEL_ID = f"all-MiniLM-L6-v2-onnx-dq8-v{QUANTIZE_VERSION}"
log = logging.getLogger("cca.embeddings")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two service workers starting together derive the model once, not side by side."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def quantized_model(cache_dir: Path, source: Path, source_sha256: str) -> Path:
    """The int8 model derived from ``source`` (whose hash the caller has checked)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"minilm-dq8-v{QUANTIZE_VERSION}.onnx"
    meta_file = target.with_suffix(".json")
    with _locked(cache_dir / ".quantize.lock"):
        if target.exists() and meta_file.exists():
            meta = json.loads(meta_file.read_text())
            if meta.get("source_sha256") == source_sha256 and meta.get("sha256") == _sha256(
                    target):
                return target
            log.warning("quantised MiniLM in %s does not match its source: deriving it again",
                        cache_dir)
        _derive(source, target)
        meta_file.write_text(json.dumps({
            "source": source.name, "source_sha256": source_sha256, "sha256": _sha256(target),
            "version": QUANTIZE_VERSION, "method": "dynamic, per-channel int8 weights",
        }))
    return target


def _no_preprocess_advice(record: logging.LogRecord) -> bool:
    # onnxruntime advises (on the root logger) a shape-inference pass that needs sympy; the
    # graph it quantises here is already the one onnxruntime optimised.
    return not str(record.msg).startswith("Please consider to run pre-processing")


def _derive(source: Path, target: Path) -> None:
    # Deferred: onnxruntime (and its quantisation tools) are heavy imports, needed only the
    # first time a home derives the model.
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        # First the float32 graph onnxruntime itself runs (weights folded, basic rewrites
        # only, so the file does not depend on this CPU), then its MatMuls in int8.
        folded = Path(tmp) / "folded.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(source), sess_options=opts, providers=["CPUExecutionProvider"])
        out = Path(tmp) / "quantized.onnx"
        root = logging.getLogger()
        root.addFilter(_no_preprocess_advice)
        try:
            quantize_dynamic(folded, out, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.removeFilter(_no_preprocess_advice)
        out.replace(target)
