"""``synthhost check`` item of the StackStorm plugin: st2api answers with the key, the
pack is installed at the version this plugin ships, and a dry-run workflow execution
succeeds (``llm_retry`` asked about a made-up failure: it only decides, nothing is
re-sent, so running it changes nothing)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from synthhost.checks import CheckResult, failed, passed, skipped
from synthhost_stackstorm.config import Config

if TYPE_CHECKING:
    from synthhost.host import Host

DRY_RUN = "llm_retry"
DRY_RUN_PARAMETERS = {
    "original_request": {"provider": "echo", "model": "synthhost-check", "messages": []},
    "failure_reason": "synthhost check: a dry run, no call failed", "error_code": "PROVIDER_ERROR",
    "retryable": True, "status_code": 503, "attempt": 1, "max_attempts": 3,
    "context": {"workspace": "synthhost-check", "dry_run": True},
}
INSTALL_FIX = "install the pack shipped with the stackstorm plugin (its README: st2 pack install)"


def shipped_version() -> str | None:
    from synthhost_stackstorm.pack import load_pack

    version = load_pack().meta.get("version")
    return str(version) if version else None


async def service(host: Host) -> CheckResult:
    from synthhost_stackstorm.client import St2Client, St2Error

    config, why = Config.from_env(host.settings.env)
    if config is None:
        return skipped(f"{why}: no self-healing workflows",
                       "set STACKSTORM_API_URL, STACKSTORM_API_KEY and ENABLE_STACKSTORM=true")
    quick = dataclasses.replace(config, http_timeout_s=min(config.http_timeout_s, 5.0))
    expected = shipped_version() if config.pack == "synthralos" else None
    try:
        async with St2Client(quick) as st2:
            pack = await st2.get_pack(config.pack)
            version = str(pack.get("version") or "?")
            if expected is not None and version != expected:
                return failed(f"{config.describe()}: pack {config.pack} {version} installed, this plugin ships "
                              f"{expected}", INSTALL_FIX)
            execution = await st2.run(config.ref(DRY_RUN), DRY_RUN_PARAMETERS,
                                      context={"synthhost": {"check": True}})
    except St2Error as exc:
        fixes = {"unauthorized": "check STACKSTORM_API_KEY (st2 apikey create)",
                 "unreachable": "check STACKSTORM_API_URL and that st2api is up",
                 "not_found": INSTALL_FIX}
        return failed(f"{config.describe()}: {exc.message}", fixes.get(exc.kind, "see st2api's logs"))
    return passed(f"{config.describe()}: pack {config.pack} {version}; dry run {DRY_RUN} "
                  f"{execution.status} in {execution.elapsed_s:.2f} s")
