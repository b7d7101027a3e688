"""The web console in a real browser: Debian's chromium driven by Playwright (no browser
download; ``SYNTHHOST_CHROMIUM`` names another binary). The server is a real ``synthhost
serve`` app on a loopback port with a seeded database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from synthhost.cli import cli
from tests.console_site import Site, make_site_host, seeded_site

CHROMIUM = os.environ.get("SYNTHHOST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def site(make_host: Any) -> Iterator[Site]:
    with seeded_site(make_site_host(make_host)) as seeded:
        yield seeded


@pytest.fixture
def open_page(browser: Any, site: Site) -> Iterator[Any]:
    """``open_page(key, width=1280)``: a fresh browser context signed in with ``key``;
    fails the test on any console error (a CSP violation among them)."""
    contexts: list[Any] = []
    problems: list[str] = []

    def make(key: str | None, width: int = 1280) -> Any:
        context = browser.new_context(base_url=site.url, viewport={"width": width, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "40" not in m.text else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        if key is not None:
            page.goto("/ui")
            assert page.url.endswith("/ui/login?next=%2Fui%2Fruns")
            page.get_by_label("API key").fill(key)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url("**/ui/runs")
        return page

    yield make
    for context in contexts:
        context.close()
    assert problems == []


def rows(page: Any) -> list[str]:
    ids: list[str] = page.eval_on_selector_all("#runs tbody tr[data-run-id]",
                                              "rows => rows.map(r => r.dataset.runId)")
    return ids


def test_sign_in_then_filter_runs(site: Site, open_page: Any) -> None:
    page = open_page(None)
    page.goto("/ui/login")
    page.get_by_label("API key").fill("sk-sh-not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    assert "not valid" in page.get_by_role("alert").inner_text()

    page = open_page(site.member_a)
    assert page.get_by_test_id("workspace").inner_text() == "a"
    a_runs = {site.runs[k] for k in ("mini", "big", "big2", "denied", "agent")}
    assert set(rows(page)) == a_runs

    page.get_by_label("Status").select_option("error")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**status=error**")
    assert rows(page) == [site.runs["denied"]]
    assert "POLICY_DENIED" in page.locator("#runs tbody").inner_text()

    page.goto("/ui/runs")
    page.get_by_label("Model").fill("gpt-4o-mini")
    page.get_by_label("Model").press("Enter")
    page.wait_for_url("**model=gpt-4o-mini**")
    assert rows(page) == [site.runs["mini"]]

    page.goto("/ui/runs?agent=writer")
    assert rows(page) == [site.runs["agent"]]
    row = page.locator(f'tr[data-run-id="{site.runs["agent"]}"]')
    assert row.locator('[data-field="tokens"]').inner_text() == "35"
    assert row.locator('[data-field="cost"]').inner_text().startswith("$0.0002")


def test_trace_shows_spans_with_cost_and_tokens_and_downloads_the_cli_export(
        site: Site, open_page: Any, db_url: str) -> None:
    page = open_page(site.member_a)
    page.get_by_role("link", name="writer").click()
    page.wait_for_url(f"**/ui/runs/{site.runs['agent']}")
    assert page.get_by_role("heading", level=1).inner_text() == "writer"
    # The waterfall: run → two steps → a model call each, a bar per span.
    assert page.locator("svg.waterfall g.span").count() == 5
    assert page.locator("svg.waterfall g.span.call rect.bar").count() == 2
    calls = page.locator("table.spans tbody tr", has_text="echo/gpt-4o")
    assert calls.count() == 2
    assert calls.nth(0).locator('[data-field="tokens"]').inner_text() == "14"
    assert calls.nth(0).locator('[data-field="cost"]').inner_text().startswith("$0.00008")
    assert "1 retry" in calls.nth(1).inner_text()  # the polish call failed once, then answered
    assert page.get_by_test_id("run-tokens").inner_text() == "35"
    page.get_by_text("Run input and output").click()
    assert "echo: Polish: echo: Draft about tea" in page.locator("details.io[open]").inner_text()

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download JSON").click()
    download = download_info.value
    assert download.suggested_filename.startswith(f"trace-{site.runs['agent']}-")
    downloaded = json.loads(Path(download.path()).read_text())

    env = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost"}
    exported = CliRunner().invoke(cli, ["traces", "export", site.runs["agent"], "--workspace", "a"], env=env)
    assert exported.exit_code == 0, exported.output
    from_cli = json.loads(exported.output)
    assert downloaded.pop("exported_at") and from_cli.pop("exported_at")
    assert downloaded == from_cli


def test_an_admin_toggles_a_flag_and_the_next_call_changes(site: Site, open_page: Any) -> None:
    page = open_page(site.admin_a)
    row = page.locator('tr[data-flag="track_model_costs"]')
    page.get_by_role("link", name="Flags").click()
    assert "Phase 1 → Phase 2 → Phase 3 → Phase 4" in page.locator("main").inner_text()
    assert row.locator("td").first.inner_text() == "Phase 1"
    assert row.locator('[data-field="value"]').inner_text() == "on"
    assert row.locator('[data-field="source"]').inner_text() == "workspace"

    page.get_by_role("button", name="Turn track_model_costs off").click()
    page.wait_for_load_state()
    assert row.locator('[data-field="value"]').inner_text() == "off"
    assert site.host.count("event_logs", event_type="admin_action", workspace_id="a") == 1

    assert site.chat(site.member_a, "echo/gpt-4o").status_code == 200
    uncosted = site.newest_run(site.member_a)
    page.goto(f"/ui/runs/{uncosted}")
    assert page.locator('table.spans tr:has-text("echo/gpt-4o") [data-field="cost"]').inner_text() == "—"
    page.goto(f"/ui/runs/{site.runs['big']}")  # a call made while the flag was on
    assert page.locator('table.spans tr:has-text("echo/gpt-4o") [data-field="cost"]').inner_text() != "—"

    page.goto("/ui/flags")
    page.get_by_role("button", name="Reset track_model_costs to the inherited value").click()
    page.wait_for_load_state()
    assert row.locator('[data-field="source"]').inner_text() == "default"
    assert site.host.count("event_logs", event_type="admin_action", workspace_id="a") == 2


def test_a_member_cannot_reach_admin_pages(site: Site, open_page: Any) -> None:
    page = open_page(site.member_a)
    assert page.get_by_role("link", name="Flags").count() == 0
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads the session
    for path in ("/ui/flags", "/ui/queues"):
        response = page.goto(path)
        assert response.status == 403
        assert "needs an admin key" in page.get_by_role("alert").inner_text()
    # A forged form post from the member's own session: refused, the flag unchanged.
    posted = page.request.post(site.url + "/ui/flags/track_model_costs", form={"enabled": "false"})
    assert posted.status == 403
    costs = next(f for f in site.host.flags.state("a") if f.name == "track_model_costs")
    assert costs.enabled and costs.source == "workspace"


def test_a_workspace_a_session_cannot_open_b_trace_by_url(site: Site, open_page: Any) -> None:
    page = open_page(site.member_a)
    for path in (f"/ui/runs/{site.runs['b']}", f"/ui/runs/{site.runs['b']}/export"):
        response = page.goto(path) if path.endswith(site.runs["b"]) else page.request.get(site.url + path)
        assert response.status == 404
    assert "No such run" in page.get_by_role("alert").inner_text()
    page.goto("/ui/runs")
    assert site.runs["b"] not in rows(page)


def test_pages_work_at_390px_and_by_keyboard(site: Site, open_page: Any) -> None:
    page = open_page(site.admin_a, width=390)
    for path in ("/ui/runs", f"/ui/runs/{site.runs['agent']}", "/ui/costs", "/ui/similarity", "/ui/flags",
                 "/ui/queues"):
        page.goto(path)
        # Wide tables and charts scroll inside their own box; the page itself never does.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
        unlabelled = page.evaluate("""[...document.querySelectorAll('input:not([type=hidden]), select, button')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
            .length""")
        assert unlabelled == 0, path
    page.goto("/ui/runs")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    reached = set()
    for _ in range(30):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("(e => e.name || e.textContent.trim())(document.activeElement)"))
    assert {"Runs", "Costs", "Flags", "status", "Filter"} <= reached


def test_a_running_run_updates_in_place_when_it_ends(site: Site, open_page: Any) -> None:
    spec = {"name": "slow", "model": "echo/gpt-4o", "params": {"echo_latency_ms": 1500},
            "steps": [{"name": "one", "prompt": "hi"}]}
    r = site_post(site, "/v1/runs", {"spec": spec})
    run_id = r["id"]
    site.host.wait_for_events()
    page = open_page(site.member_a)
    status = page.locator(f'tr[data-run-id="{run_id}"] [data-field="status"]')
    assert status.inner_text() in ("running", "ok")  # "ok" only on a very slow machine
    status.filter(has_text="ok").wait_for(timeout=30_000)  # the SSE event, no reload
    assert page.locator(f'tr[data-run-id="{run_id}"] [data-field="tokens"]').inner_text() != "—"


def site_post(site: Site, path: str, body: dict[str, Any]) -> dict[str, Any]:
    import httpx

    r = httpx.post(site.url + path, headers={"Authorization": f"Bearer {site.member_a}"}, json=body, timeout=30)
    assert r.status_code == 202, r.text
    out: dict[str, Any] = r.json()
    return out
