"""Shared fixtures. Qt runs offscreen; every wait is a condition with a timeout, never a fixed sleep."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "condition",
             poll_s: float = 0.01) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


@pytest.fixture
def repo() -> Path:
    return REPO
