"""Manual check of the ``hub:`` adapter against the real Guardrails AI (not a test: CI
does not install the extra). Run it in a scratch venv, with a HOME that has no
``.guardrailsrc`` (the worst case: metrics on by default)::

    uv venv /tmp/gr && uv pip install --python /tmp/gr/bin/python -e . \\
        -e 'plugins/guardrails[guardrails-ai]' guardrails-ai-regex-match \\
        guardrails-ai-secrets-present guardrails-ai-valid-length
    HOME=$(mktemp -d) /tmp/gr/bin/python -W ignore plugins/guardrails/tools/check_guardrails_ai.py

Every non-loopback connection and DNS lookup is blocked and recorded; the script fails
(exit 1) if any was attempted during the calls or in the 7 s after them (longer than
the OpenTelemetry batch interval), or if an outcome differs from what is expected.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
from typing import Any

LOOPBACK = ("127.0.0.1", "::1", "localhost", None)
attempts: list[tuple[str, Any]] = []
_connect = socket.socket.connect
_getaddrinfo = socket.getaddrinfo


def _blocked_connect(self: socket.socket, address: Any) -> None:
    if isinstance(address, tuple) and address[0] not in LOOPBACK:
        attempts.append(("connect", address))
        raise OSError("blocked by check_guardrails_ai")
    _connect(self, address)


def _blocked_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host not in LOOPBACK:
        attempts.append(("dns", host))
        raise socket.gaierror("blocked by check_guardrails_ai")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _blocked_connect  # type: ignore[method-assign,assignment]
socket.getaddrinfo = _blocked_getaddrinfo

import synthhost_guardrails  # noqa: E402  (after the network is fenced off)
from synthhost import Denied  # noqa: E402
from synthhost.host import Host  # noqa: E402
from synthhost.settings import Settings  # noqa: E402

SET = """
input:
  - {validator: 'hub:regex_match', on_fail: exception, roles: [user], args: {regex: '^[A-Z]', match_type: search}}
output:
  - {validator: 'hub:secrets_present', on_fail: fix}
  - {validator: 'hub:guardrails/valid_length', on_fail: fix, args: {min: 1, max: 40}}
"""


async def main() -> list[str]:
    problems: list[str] = []
    tmp = tempfile.mkdtemp()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp}/db.sqlite", "SYNTHHOST_HOME": tmp}
    host = Host(Settings.from_env(env), plugins=[synthhost_guardrails], load_entrypoints=False)
    async with host:
        host.flags.set(synthhost_guardrails.FLAG, True)
        started = time.perf_counter()
        synthhost_guardrails.apply_guards(host, SET)
        print(f"apply (imports Guardrails AI, builds 3 guards): {time.perf_counter() - started:.1f} s")
        reply = await host.complete(
            model="echo/m",
            messages="Hello there",
            params={"echo_reply": "key AKIAIOSFODNN7EXAMPLE and a long tail of words to cut off"},
        )
        print("fixed answer:", repr(reply.text))
        if "AKIA" in reply.text or len(reply.text) > 40:
            problems.append("the answer was not masked and cut")
        try:
            await host.complete(model="echo/m", messages="lower case prompt")
            problems.append("a lower-case prompt was not denied")
        except Denied as denied:
            print("input denied:", denied.code, denied.message)
        calls = host.provider("echo").call_count  # type: ignore[attr-defined]
        if calls != 1:
            problems.append(f"the provider was called {calls} times, expected 1")
        n = 50
        started = time.perf_counter()
        for _ in range(n):
            await host.complete(model="echo/m", messages="Hello", params={"echo_reply": "fine"})
        print(f"per call with 3 hub validators: {(time.perf_counter() - started) / n * 1000:.1f} ms")
    from guardrails.settings import settings

    if settings.rc.enable_metrics is not False or settings.disable_tracing is not True:
        problems.append("Guardrails telemetry settings are not off")
    if "litellm" in sys.modules:
        problems.append("LiteLLM was imported")
    return problems


if __name__ == "__main__":
    found = asyncio.run(main())
    time.sleep(7)  # longer than the OpenTelemetry batch export interval (5 s)
    if attempts:
        found.append(f"outbound network attempts: {attempts}")
    for problem in found:
        print("PROBLEM:", problem)
    print("ok" if not found else "FAILED")
    sys.exit(1 if found else 0)
