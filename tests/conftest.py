"""Shared test helpers: paths to fixtures and to the Banking77 copy beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BANKING77 = ROOT.parent / "shared" / "datasets" / "banking77"

os.environ.setdefault("CCA_NO_PROGRESS", "1")


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
