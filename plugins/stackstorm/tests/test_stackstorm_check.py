"""``synthhost check``'s StackStorm item against the loopback st2api running the
shipped pack: skipped when not configured; passing (key accepted, pack at the shipped
version, the dry-run workflow succeeded); failing on a wrong key, an old pack, a failed
workflow and st2api down. The API key never appears in what the check prints."""

from __future__ import annotations

from typing import Any

import anyio

from synthhost.checks import run_checks
from synthhost_stackstorm.checks import shipped_version
from synthhost_stackstorm.testing import FakeSt2


def item(host: Any) -> Any:
    return {o.name: o for o in anyio.run(run_checks, host, 4)}["stackstorm"]


def test_stackstorm_check(kit: Any, st2: FakeSt2) -> None:
    assert item(kit.host(configured=False)).status == "skip"
    host = kit.host()
    ok = item(host)
    assert ok.status == "pass", ok
    assert f"pack synthralos {shipped_version()}; dry run llm_retry succeeded" in ok.detail
    [execution] = st2.executions("synthralos.llm_retry")
    assert execution["parameters"]["context"]["dry_run"] is True

    st2.pack_version = "0.9.0"
    old = item(host)
    assert old.status == "fail" and f"0.9.0 installed, this plugin ships {shipped_version()}" in old.detail
    st2.pack_version = None

    st2.script("synthralos.llm_retry", status="failed", errors=["workflow broke"])
    broken = item(host)
    assert broken.status == "fail" and "failed" in broken.detail

    wrong_key = item(kit.host(env={"STACKSTORM_API_KEY": "not-the-key"}))
    assert wrong_key.status == "fail" and "STACKSTORM_API_KEY" in wrong_key.fix

    down = item(kit.host(env={"STACKSTORM_API_URL": FakeSt2.closed_url()}))
    assert down.status == "fail" and "STACKSTORM_API_URL" in down.fix
    key = st2.api_key or ""
    assert key and all(key not in f"{o.detail} {o.fix}" for o in (ok, old, broken, wrong_key, down))
