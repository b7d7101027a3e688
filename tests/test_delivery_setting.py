"""SYNTHHOST_DELIVERY: where the outbox is delivered."""

from __future__ import annotations

import pytest

from synthhost.errors import UsageError
from synthhost.host import Host
from synthhost.outbox import OutboxWorker
from synthhost.settings import Settings
from tests.test_outbox import PENDING, Tiny, TinyPlugin, states, until

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["worker", "off"])
async def test_delivery_elsewhere_queues_without_delivering(make_host, mode):
    exporter = Tiny()
    async with make_host(TinyPlugin(exporter), env={"SYNTHHOST_DELIVERY": mode}) as host:
        for i in range(3):
            host.emit("run_finished", workspace="w1", n=i)
        await host.writer.flush()
        assert states(host) == {PENDING: 3}
        assert host._outbox is None
        # a delivering process (what `synthhost worker` runs) takes them
        worker = OutboxWorker(host)
        worker.start()
        try:
            await until(lambda: len(exporter.ids) == 3, what="3 deliveries")
        finally:
            worker.stop(10)


async def test_inline_delivery_is_the_default(make_host):
    exporter = Tiny()
    async with make_host(TinyPlugin(exporter)) as host:
        host.emit("run_finished", workspace="w1")
        await until(lambda: len(exporter.ids) == 1, what="a delivery")


def test_a_bad_delivery_value_names_the_setting(tmp_path):
    with pytest.raises(UsageError, match="SYNTHHOST_DELIVERY='sometimes'"):
        Host(Settings.from_env({"SYNTHHOST_DELIVERY": "sometimes",
                                "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}), load_entrypoints=False)
