"""A plugin in a distribution that knows nothing of this repository: built from a temp
directory, installed, discovered through the ``synthhost`` entry point, gated by its own
flag, called with all four call hooks, and unable to fail a run by crashing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = '''
import json, os
from synthhost import hookimpl

LOG = os.environ["ACME_LOG"]


def _log(**kw):
    with open(LOG, "a") as fh:
        fh.write(json.dumps(kw) + "\\n")


@hookimpl
def register_flags(register):
    register("enable_acme", default=False, description="Acme's audit plugin")


@hookimpl
def register_gate(register):
    register("enable_acme", order=550)


@hookimpl
def pre_call(call):
    _log(hook="pre_call", workspace=call.workspace, attempt=call.attempt)


@hookimpl
async def post_call(call, response):
    _log(hook="post_call", workspace=call.workspace, text=response.text)
    raise RuntimeError("acme post_call bug")


@hookimpl
def on_failure(call, error, attempt):
    _log(hook="on_failure", workspace=call.workspace, code=error.code, attempt=attempt)


@hookimpl
def on_trace(trace):
    _log(hook="on_trace", workspace=trace.workspace, status=trace.status, spans=len(trace.spans))
'''

PYPROJECT = '''
[project]
name = "acme-synthhost-audit"
version = "1.2.3"
dependencies = []

[project.entry-points.synthhost]
acme = "acme_audit"

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
packages = ["acme_audit"]
'''

AGENT = '''
name: audited
model: echo/gpt-4o-mini
params: {echo_fail: {"1": "server_error"}}
retry: {max_attempts: 3, initial_delay_s: 0.01, max_delay_s: 0.02}
steps:
  - name: answer
    prompt: "Say hi"
'''

DRIVER = '''
import anyio, json, sys
from synthhost import Host
from synthhost.agent import parse_agent

async def main():
    async with Host.from_env() as host:
        info = host.plugins.info["acme"]
        print(json.dumps({"dist": info.distribution, "version": info.version,
                          "plugins": host.plugins.order}), flush=True)
        host.flags.set("enable_acme", True, workspace="on")
        spec = parse_agent(sys.argv[1])
        results = {}
        for ws in ("on", "off"):
            result = await host.run(spec, workspace=ws)
            results[ws] = result.status
        print(json.dumps(results), flush=True)

anyio.run(main)
'''


def test_third_party_plugin_is_discovered_gated_and_isolated(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "acme_audit").mkdir(parents=True)
    (src / "acme_audit" / "__init__.py").write_text(PLUGIN)
    (src / "pyproject.toml").write_text(PYPROJECT)
    site = tmp_path / "site"
    # Install it the way a user would (a wheel built by its own backend), into a
    # directory put on the path of a fresh interpreter.
    subprocess.run(
        ["uv", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--python", sys.executable, "--target", str(site), str(src)],
        check=True,
    )
    log = tmp_path / "acme.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "ACME_LOG": str(log),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'host.db'}",
        "SYNTHHOST_LOAD_PLUGINS": "acme",
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DRIVER), AGENT],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    discovered = json.loads(first)
    assert discovered["dist"] == "acme-synthhost-audit" and discovered["version"] == "1.2.3"
    assert "acme" in discovered["plugins"]
    # Its post_call crashes, yet both runs succeed.
    assert json.loads(second) == {"on": "ok", "off": "ok"}
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["workspace"] for e in seen} == {"on"}, "gated off in workspace 'off'"
    hooks = [e["hook"] for e in seen]
    assert hooks == ["pre_call", "on_failure", "pre_call", "post_call", "on_trace"]
    assert seen[1]["code"] == "PROVIDER_ERROR"
    assert seen[-1]["status"] == "ok"
