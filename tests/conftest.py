"""Shared test helpers: paths to fixtures and to the Banking77 copy beside the checkout."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BANKING77 = ROOT.parent / "shared" / "datasets" / "banking77"

os.environ.setdefault("CCA_NO_PROGRESS", "1")


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``pred`` until true or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()
