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
# The fixture files hold a few dozen tickets: too few for any class to earn a per-class
# precision bound, so every class would go to review. Tests of the plumbing use the common
# threshold chosen on the holdout; the Banking77 tests (tests/model) and
# tests/integration/test_operating_points_e2e.py turn per-class thresholds back on.
os.environ.setdefault("CCA_PER_CLASS_THRESHOLDS", "false")


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


def require(present: bool, missing: str) -> None:
    """Skip a test whose outside dependency (a binary, a server) is missing on a developer's
    machine, but fail it in CI (``CI`` set): there the set-up installs and starts them, and a
    test that quietly skips would leave its promise unchecked while CI stays green."""
    if present:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{missing} (CI is set: a missing dependency is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(missing)


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``pred`` until true or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()
