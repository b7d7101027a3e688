"""How long the console takes to show a trace of N spans (issue 13: 500 spans in under a
second of browser time), and its other pages.

A host on a temp SQLite file (or ``--database-url``) runs one agent of ``(N - 1) / 2``
steps (run → steps → one model call each, the echo provider at zero latency: N spans),
is served by ``synthhost serve``'s app on a loopback port, and:

1. server: ``GET /ui/runs/{id}`` through HTTP, ``--loads`` times after 3 warm-ups,
   p50/max wall time of the request;
2. browser: Debian's chromium (Playwright, ``--chromium``) loads the page ``--loads``
   times; browser time = the navigation's ``loadEventEnd`` (request, HTML parse, style,
   layout and the SVG waterfall), p50/max.

    uv run python benchmarks/console.py
    uv run python benchmarks/console.py --spans 2001 --loads 5 --json

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.gateway_server

import anyio
import httpx

from synthhost.agent import parse_agent
from synthhost.gateway.keys import create_key
from synthhost.host import Host
from synthhost.settings import Settings
from tests.gateway_server import serving


def agent_of(spans: int) -> Any:
    steps = max(1, spans // 2)  # a run span, then a step and a call each
    lines = ["name: long", "model: echo/gpt-4o-mini", "steps:"]
    lines += [f"  - {{name: s{i}, prompt: 'step {i}'}}" for i in range(steps)]
    return parse_agent("\n".join(lines))


def stats(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(samples), 1), "max_ms": round(max(samples), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=500)
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--chromium", default=os.environ.get("SYNTHHOST_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--database-url")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="console-bench-")
    env = {**os.environ, "DATABASE_URL": args.database_url or f"sqlite:///{tmp}/bench.db",
           "SYNTHHOST_HOME": tmp, "SYNTHHOST_SPOOL_DIR": f"{tmp}/spool"}
    host = Host(Settings.from_env(env), load_entrypoints=False)
    spec = agent_of(args.spans)

    async def record() -> str:
        async with host:
            result = await host.run(spec, workspace="bench")
            return result.run_id

    run_id = anyio.run(record)
    host = Host(Settings.from_env(env), load_entrypoints=False)
    out: dict[str, Any] = {"spans": None, "loads": args.loads}
    with serving(host) as url:
        key, _ = create_key(host.engine, "bench")
        client = httpx.Client(base_url=url, timeout=60)
        client.post("/ui/login", data={"key": key})
        page_path = f"/ui/runs/{run_id}"
        out["spans"] = client.get(page_path).text.count('<g class="span ')
        for _ in range(3):
            client.get(page_path)
        server = []
        for _ in range(args.loads):
            started = time.perf_counter()
            assert client.get(page_path).status_code == 200
            server.append((time.perf_counter() - started) * 1000)
        out["server"] = stats(server)
        out["html_bytes"] = len(client.get(page_path).content)

        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium)
            context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
            context.add_cookies([{"name": c.name, "value": c.value or "", "url": url + "/ui"}
                                 for c in client.cookies.jar])
            page = context.new_page()
            browser_ms = []
            for i in range(args.loads + 1):
                page.goto(page_path)
                timing = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
                if i:  # the first load warms the browser's caches
                    browser_ms.append(float(timing))
            out["browser"] = stats(browser_ms)
            for other in ("/ui/runs", "/ui/costs", "/ui/flags"):
                page.goto(other)
                out.setdefault("other_pages_browser_ms", {})[other] = round(float(page.evaluate(
                    "performance.getEntriesByType('navigation')[0].loadEventEnd")), 1)
            browser.close()
        client.close()

    if args.json:
        print(json.dumps(out))
        return
    print(f"trace page with {out['spans']} spans ({out['html_bytes'] / 1024:.0f} KiB of HTML), {args.loads} loads")
    print(f"  server (HTTP round trip): p50 {out['server']['p50_ms']} ms, max {out['server']['max_ms']} ms")
    print(f"  browser (loadEventEnd):   p50 {out['browser']['p50_ms']} ms, max {out['browser']['max_ms']} ms")
    for path, ms in out["other_pages_browser_ms"].items():
        print(f"  {path}: {ms} ms")


if __name__ == "__main__":
    main()
