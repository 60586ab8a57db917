"""The driver cases the conformance suite runs (one or more per driver)."""

from __future__ import annotations

from tests.conformance.harness import DriverCase

CASES: list[type[DriverCase]] = []
