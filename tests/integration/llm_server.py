"""The real local LLM (llama.cpp server, Qwen2.5-Coder-0.5B Q4_K_M) for integration tests.

One server per test session, on a free port, under its own home: the GGUF is joined from the
installed chunk packages and verified there (~2 s), the model loads in ~1-3 s. Tests that
need an LLM talk to ``server.base_url`` with ``server.model_name`` like any OpenAI endpoint.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cascade.llm_local import LocalLLMServer
from cca.settings import Settings

THREADS = 2  # the CI machine's cores; more only oversubscribes
CONTEXT = 2048  # a classification prompt with few-shot examples fits; less memory than 4096


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def local_llm_server(home: Path) -> Iterator[LocalLLMServer]:
    """The server started on ``home`` (a fresh CCA_HOME), stopped at the end."""
    server = LocalLLMServer(Settings(home=home), port=free_port(), threads=THREADS,
                            ctx=CONTEXT, startup_timeout_s=60)
    with server:
        yield server
