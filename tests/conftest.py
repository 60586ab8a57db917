"""Fixtures every test directory shares; the helpers behind them are in :mod:`tests.kit`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest

from netstack.chardev import ChardevTable
from netstack.daemon import Netstack
from tests.kit.clock import ManualLoop
from tests.kit.daemon import in_process
from tests.kit.guests import guest_image_or_skip
from tools.guest import GuestImage


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "manual_clock: run the test (and its async fixtures) on a tests.kit.clock.ManualLoop",
    )


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """``@pytest.mark.manual_clock`` tests get a :class:`~tests.kit.clock.ManualLoop`; the
    rest the default loop."""
    if item.get_closest_marker("manual_clock") is not None:
        return {"manual": ManualLoop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
async def ns(tmp_path: Path) -> AsyncIterator[Netstack]:
    """An in-process daemon with every driver, its runtime directory ``tmp_path``."""
    async with in_process(tmp_path) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def image() -> GuestImage:
    """The QEMU test guest, built once (skips without QEMU)."""
    return guest_image_or_skip()


@pytest.fixture
async def table() -> AsyncIterator[ChardevTable]:
    """A chardev table of its own, every chardev closed afterwards."""
    t = ChardevTable()
    try:
        yield t
    finally:
        await t.close_all()
