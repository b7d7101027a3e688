"""SYNTHHOST_GC_FREEZE: a host keeps its start-up heap out of the collector's scans while
it runs (on in `synthhost serve` and `synthhost worker`), and gives it back when it stops."""

from __future__ import annotations

import gc

import pytest

from synthhost import gil
from synthhost.settings import Settings

pytestmark = pytest.mark.anyio


def test_the_setting_is_off_unless_asked_for() -> None:
    assert Settings.from_env({}).gc_freeze is False
    assert Settings.from_env({"SYNTHHOST_GC_FREEZE": "0"}).gc_freeze is False
    assert Settings.from_env({"SYNTHHOST_GC_FREEZE": "1"}).gc_freeze is True


async def test_a_host_freezes_its_startup_heap_and_thaws_it_when_it_stops(make_host) -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    async with make_host(env={"SYNTHHOST_GC_FREEZE": "1"}) as host:
        assert gc.get_freeze_count() > 1000  # the modules, classes and the host itself
        assert gc.get_threshold()[0] == max(before[0], gil.GEN0_THRESHOLD)
        assert gc.get_threshold()[1:] == before[1:]
        await host.complete(model="echo/m", messages="hi", workspace="w")
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


async def test_without_the_setting_nothing_is_frozen(make_host) -> None:
    before = gc.get_threshold()
    async with make_host() as host:
        await host.complete(model="echo/m", messages="hi", workspace="w")
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before
