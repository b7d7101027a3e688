"""A tool pack in a distribution of its own: built from a temp directory, installed,
discovered through the ``synthhost`` entry point, and its tools called by an agent that
names them (argument schema from the type hints, bad arguments refused before the tool
runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PACK = '''
from synthhost import hookimpl


@hookimpl
def register_tools(register):
    def word_count(text: str) -> int:
        """Count the words of a text."""
        return len(text.split())

    register(word_count)
'''

PYPROJECT = '''
[project]
name = "acme-synthhost-tools"
version = "0.4.0"
dependencies = []

[project.entry-points.synthhost]
acme_tools = "acme_tools"

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
packages = ["acme_tools"]
'''

AGENT = '''
name: counter
model: echo/gpt-4o-mini
tools: [{name: word_count}]
params:
  echo_tool_calls:
    - - {name: word_count, arguments: {text: "one two three"}}
      - {name: word_count, arguments: {words: 3}}
steps:
  - name: count
    prompt: "How many words?"
'''

DRIVER = '''
import anyio, json, sys
from synthhost import Host
from synthhost.agent import parse_agent

async def main():
    async with Host.from_env() as host:
        info = host.plugins.info["acme_tools"]
        result = await host.run(parse_agent(sys.argv[1]), workspace="w1")
        print(json.dumps({"dist": info.distribution, "version": info.version,
                          "status": result.status, "output": result.output}), flush=True)

anyio.run(main)
'''


def test_a_tool_pack_installed_as_a_distribution_is_discovered_and_called(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "acme_tools").mkdir(parents=True)
    (src / "acme_tools" / "__init__.py").write_text(PACK)
    (src / "pyproject.toml").write_text(PYPROJECT)
    site = tmp_path / "site"
    subprocess.run(
        ["uv", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--python", sys.executable, "--target", str(site), str(src)],
        check=True,
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'host.db'}",
        "SYNTHHOST_LOAD_PLUGINS": "acme_tools",
    }
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(DRIVER), AGENT],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dist"] == "acme-synthhost-tools" and out["version"] == "0.4.0"
    assert out["status"] == "ok"
    # The first call ran; the second was refused by the schema its type hints gave.
    assert out["output"] == "echo: 3; invalid arguments: text: Field required; words: Extra inputs are not permitted"
