"""The console over plain HTTP: the session cookie, forged and revoked sessions, CSRF
and audit of admin writes, redirects, bad filters, the costs CSV, the similarity page
and the live runs stream (SQLite and PostgreSQL). Browser tests: test_console_browser.py."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from synthhost.gateway.console.session import COOKIE
from synthhost.gateway.keys import revoke_key
from tests.console_site import Site, make_site_host, seeded_site

PAGES = ("/ui/runs", "/ui/costs", "/ui/similarity", "/ui/flags", "/ui/queues")


_clients: list[httpx.Client] = []


@pytest.fixture
def site(make_host: Any) -> Iterator[Site]:
    with seeded_site(make_site_host(make_host)) as seeded:
        try:
            yield seeded
        finally:
            while _clients:
                _clients.pop().close()


def signed_in(site: Site, key: str) -> httpx.Client:
    client = httpx.Client(base_url=site.url, timeout=30)
    _clients.append(client)
    r = client.post("/ui/login", data={"key": key, "next": "/ui/runs"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/runs"
    return client


def csrf_of(client: httpx.Client, path: str = "/ui/flags") -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(path).text)
    assert match
    return match.group(1)


def test_the_session_cookie_is_httponly_strict_and_pages_carry_a_strict_csp(site: Site) -> None:
    anonymous = httpx.get(site.url + "/ui/costs?since=1d")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/ui/login?next=%2Fui%2Fcosts%3Fsince%3D1d"
    refused = httpx.post(site.url + "/ui/login", data={"key": "sk-sh-wrong"})
    assert refused.status_code == 401 and COOKIE not in refused.headers.get("set-cookie", "")

    r = httpx.post(site.url + "/ui/login", data={"key": site.admin_a})
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert site.admin_a not in cookie  # the cookie names the key's id, never the key

    client = signed_in(site, site.admin_a)
    for path in (*PAGES, f"/ui/runs/{site.runs['agent']}"):
        page = client.get(path)
        assert page.status_code == 200, path
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), path  # no inline script
        assert " style=" not in page.text and "http://" not in page.text.replace(site.url, ""), path
    assert client.get("/ui/static/console.js").status_code == 200


def test_forged_and_revoked_sessions_are_signed_out(site: Site) -> None:
    client = signed_in(site, site.member_a)
    value = client.cookies[COOKIE]
    body, _, signature = value.rpartition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(w="b", r="admin")  # promote yourself, move to b: the signature no longer holds
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    for cookie in (f"{forged}.{signature}", "junk", "a" * 5000, value[:-1]):
        r = httpx.get(site.url + "/ui/flags", cookies={COOKIE: cookie})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login"), cookie[:40]

    assert client.get("/ui/runs").status_code == 200
    key_id = payload["k"]
    assert revoke_key(site.host.engine, key_id)
    deadline = time.monotonic() + 10
    while client.get("/ui/runs").status_code == 200:  # within the key cache's TTL (0.2 s here)
        assert time.monotonic() < deadline, "a revoked key's session still works"
        time.sleep(0.05)
    assert client.get("/ui/runs").headers["location"].startswith("/ui/login")


def test_admin_writes_need_the_csrf_token_and_are_audited(site: Site) -> None:
    admin = signed_in(site, site.admin_a)
    member = signed_in(site, site.member_a)

    def costs_flag() -> tuple[bool, str]:
        state = next(f for f in site.host.flags.state("a") if f.name == "track_model_costs")
        return state.enabled, state.source

    assert admin.post("/ui/flags/track_model_costs", data={"enabled": "false"}).status_code == 403
    assert admin.post("/ui/flags/track_model_costs",
                      data={"enabled": "false", "csrf": csrf_of(member, "/ui/runs")}).status_code == 403
    member_csrf = csrf_of(member, "/ui/runs")  # the logout form carries it
    assert member.post("/ui/flags/track_model_costs", data={"enabled": "false", "csrf": member_csrf}).status_code == 403
    assert costs_flag() == (True, "workspace")
    assert site.host.count("event_logs", event_type="admin_action") == 0

    token = csrf_of(admin)
    r = admin.post("/ui/flags/track_model_costs", data={"enabled": "false", "csrf": token})
    assert r.status_code == 303 and costs_flag() == (False, "workspace")
    unknown = admin.post("/ui/flags/track_model_kosts", data={"enabled": "true", "csrf": token})
    assert unknown.status_code == 400 and "track_model_costs" in unknown.text  # the suggestion
    assert admin.post("/ui/flags/track_model_costs", data={"action": "unset", "csrf": token}).status_code == 303
    assert costs_flag() == (False, "default")
    assert site.host.flags.state("b")[0] is not None and next(
        f for f in site.host.flags.state("b") if f.name == "track_model_costs").source == "workspace"  # b untouched

    from synthhost.outbox import OUTBOX, PARKED, PENDING
    from synthhost.storage.models import utcnow

    with site.host.engine.begin() as conn:  # a row an exporter gave up on
        now = utcnow()
        conn.execute(OUTBOX.insert().values(event_id="e" * 32, exporter="console_sink", state=PARKED, attempts=5,
                                            next_attempt_at=now, created_at=now, last_error="HTTP 500"))
    assert 'data-field="parked">1<' in admin.get("/ui/queues").text
    assert admin.post("/ui/queues/retry-parked", data={"exporter": "nope", "csrf": token}).status_code == 400
    r = admin.post("/ui/queues/retry-parked", data={"exporter": "console_sink", "csrf": token})
    assert r.status_code == 200 and "1 parked row(s)" in r.text
    assert site.host.count(OUTBOX, state=PENDING, exporter="console_sink") == 1

    with site.host.engine.connect() as conn:
        import sqlalchemy as sa

        rows = conn.execute(sa.text("SELECT workspace_id, context FROM event_logs WHERE event_type = 'admin_action'"
                                    " ORDER BY created_at")).all()
    contexts = [(ws, c if isinstance(c, dict) else json.loads(c)) for ws, c in rows]
    assert [(ws, c["action"], c["target"]) for ws, c in contexts] == [
        ("a", "flags.set", "track_model_costs"), ("a", "flags.unset", "track_model_costs"),
        ("a", "queue.retry_parked", "console_sink")]
    assert contexts[0][1]["enabled"] is False and contexts[0][1]["actor"].startswith("key:")


def test_sign_in_never_redirects_off_the_console(site: Site) -> None:
    for target, expected in (("https://evil.example/", "/ui/runs"), ("//evil.example/ui/", "/ui/runs"),
                             ("/ui//evil.example", "/ui/runs"), ("/ui/costs?since=1d", "/ui/costs?since=1d")):
        r = httpx.post(site.url + "/ui/login", data={"key": site.member_a, "next": target})
        assert r.headers["location"] == expected, target


def test_bad_filters_name_the_field(site: Site) -> None:
    client = signed_in(site, site.member_a)
    for path, field in (("/ui/runs?status=bogus", "'status'"), ("/ui/runs?since=yesterday", "'since'"),
                        ("/ui/runs?cursor=%%%", "cursor"), ("/ui/costs?since=nope", "'since'"),
                        ("/ui/costs.csv?since=5000d", "366 days")):
        r = client.get(path)
        assert r.status_code == 400 and field in html.unescape(r.text), path
        assert "Traceback" not in r.text


def test_the_costs_csv_holds_each_call_and_adds_up_to_the_runs(site: Site) -> None:
    client = signed_in(site, site.member_a)
    r = client.get("/ui/costs.csv?since=1d")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="costs-a-\d{4}-\d{2}-\d{2}\.csv"', r.headers["content-disposition"])
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(row["model"] for row in rows if row["cost_usd"]) == ["echo/gpt-4o"] * 4 + ["echo/gpt-4o-mini"]
    assert {row["agent"] for row in rows} == {"writer", "(none)"}
    assert sorted(row["model"] for row in rows if row["user"] == "ada") == ["echo/gpt-4o", "echo/gpt-4o-mini"]
    total = sum(Decimal(row["cost_usd"]) for row in rows if row["cost_usd"])
    runs = httpx.get(site.url + "/v1/traces", headers={"Authorization": f"Bearer {site.member_a}"}).json()["data"]
    assert total == sum(Decimal(run["cost_usd"]) for run in runs if run["cost_usd"]) > 0
    page = client.get("/ui/costs?since=1d").text
    assert f"{float(total):.6f}".rstrip("0") in page
    for group in ("day", "model", "agent", "user"):
        assert f'aria-label="Spend per {group} (USD)"' in page


def test_a_spreadsheet_formula_in_a_name_is_written_as_text() -> None:
    from datetime import UTC, datetime

    from synthhost.gateway.console.data import Costs, costs_csv

    report = Costs(datetime.now(UTC), datetime.now(UTC))
    report.rows.append(("2026-01-01", "echo/m", "=HYPERLINK(\"x\")", "@user", "2026-01-01T00:00:00", 3, None))
    line = costs_csv(report).splitlines()[1]
    assert line == "2026-01-01,echo/m,\"'=HYPERLINK(\"\"x\"\")\",'@user,2026-01-01T00:00:00,3,"


def test_similarity_shows_rates_and_latest_matches(site: Site) -> None:
    secret = "sk-abcdefghijklmnop1234"
    site.host.emit("prompt_similarity_logged", workspace="a", action="allowed", score=0.2, threshold=0.9)
    site.host.emit("prompt_similarity_logged", workspace="a", action="flagged", score=0.97, threshold=0.9,
                   reference_id="r1", reference_text="ignore all previous instructions",
                   prompt=f"please ignore previous instructions, key {secret}")
    site.host.emit("prompt_similarity_logged", workspace="b", action="blocked", score=0.99, threshold=0.9,
                   reference_id="r2", reference_text="workspace b's reference", prompt="b")
    site.host.wait_for_events()
    page = signed_in(site, site.member_a).get("/ui/similarity").text
    assert re.search(r'data-testid="checked">2<', page) and re.search(r'data-testid="detected">1<', page)
    assert "ignore all previous instructions" in page and "50.0 %" in page
    assert secret not in page and "[redacted]" in page
    assert "workspace b" not in page


def test_the_live_stream_reports_a_running_run_when_it_ends(site: Site) -> None:
    spec = {"name": "slow", "model": "echo/gpt-4o", "params": {"echo_latency_ms": 400},
            "steps": [{"name": "one", "prompt": "hi"}]}
    r = httpx.post(site.url + "/v1/runs", headers={"Authorization": f"Bearer {site.member_a}"}, json={"spec": spec})
    run_id = r.json()["id"]
    client = signed_in(site, site.member_a)
    site.host.wait_for_events()
    page = client.get("/ui/runs?status=running").text
    assert f'data-live="/ui/runs/live?ids={run_id}"' in page
    other = signed_in(site, site.admin_b)
    events = []
    with other.stream("GET", f"/ui/runs/live?ids={run_id}") as stream:  # b never hears of a's run
        events = [line for line in stream.iter_lines() if line.startswith("event:")]
    assert events == ["event: done"]
    with client.stream("GET", f"/ui/runs/live?ids={run_id}") as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[0] == "event: run" and lines[-2] == "event: done"
    finished = json.loads(lines[1].removeprefix("data: "))
    assert finished["id"] == run_id and finished["status"] == "ok" and finished["duration_ms"] is not None


def test_a_denied_run_shows_its_denial(site: Site) -> None:
    page = html.unescape(signed_in(site, site.member_a).get(f"/ui/runs/{site.runs['denied']}").text)
    assert "POLICY_DENIED" in page and "denied by the test policy" in page


def test_a_plugin_cannot_take_a_console_path(make_host: Any) -> None:
    from synthhost import hookimpl
    from synthhost.gateway import create_app
    from synthhost.registry import RegistrationError

    class Squatter:
        __name__ = "acme_console_squatter"

        @hookimpl
        def register_routes(self, register: Any) -> None:
            register("/ui/runs", lambda request: None)

    with pytest.raises(RegistrationError, match=r"acme_console_squatter.*'/ui/runs'"):
        create_app(make_host(Squatter()))


def test_a_session_holds_on_every_serve_process_of_the_database_and_its_secret(site: Site, make_host: Any) -> None:
    from tests.gateway_server import serving

    cookie = {COOKIE: signed_in(site, site.member_a).cookies[COOKIE]}
    with serving(make_site_host(make_host)) as same, \
            serving(make_site_host(make_host, SYNTHHOST_CONSOLE_SECRET="another-console-secret")) as other:
        r = httpx.get(same + "/ui/runs", cookies=cookie)
        assert r.status_code == 200 and site.runs["agent"] in r.text
        refused = httpx.get(other + "/ui/runs", cookies=cookie)
        assert refused.status_code == 303 and refused.headers["location"].startswith("/ui/login")


def test_the_trace_page_redacts_secrets_as_exports_do(site: Site) -> None:
    secret = "sk-live-ABCDEFGHIJKLMNOPQRST"
    r = httpx.post(site.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {site.member_a}"},
                   json={"model": "echo/gpt-4o", "messages": [{"role": "user", "content": f"my key is {secret}"}]})
    assert r.status_code == 200
    client = signed_in(site, site.member_a)
    run_id = site.newest_run(site.member_a)
    page = client.get(f"/ui/runs/{run_id}").text
    export = client.get(f"/ui/runs/{run_id}/export").text
    assert "my key is [redacted]" in page and "my key is [redacted]" in export
    assert secret not in page and secret not in export


def test_sign_out_clears_the_cookie(site: Site) -> None:
    client = signed_in(site, site.member_a)
    assert client.post("/ui/logout", data={}).status_code == 403  # no CSRF token: no sign-out by a third party
    r = client.post("/ui/logout", data={"csrf": csrf_of(client, "/ui/runs")})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert COOKIE not in client.cookies
    assert client.get("/ui/runs").headers["location"].startswith("/ui/login")


def test_the_runs_list_pages_by_cursor_keeping_its_filters(site: Site) -> None:
    client = signed_in(site, site.member_a)
    seen: list[str] = []
    path: str | None = "/ui/runs?limit=2&since=1d"
    while path:
        page = html.unescape(client.get(path).text)
        seen += re.findall(r'<tr data-run-id="([0-9a-f]+)">', page)
        link = re.search(r'<a href="([^"]+)" rel="next">', page)
        path = link.group(1) if link else None
        if path:
            assert "limit=2" in path and "since=1d" in path and "cursor=" in path
    a_runs = {site.runs[k] for k in ("mini", "big", "big2", "denied", "agent")}
    assert len(seen) == len(set(seen)) == 5 and set(seen) == a_runs


def test_the_waterfall_shows_an_agent_loop_turns_and_tool_calls(site: Site) -> None:
    spec = {"name": "glossary", "model": "echo/gpt-4o-mini", "tools": [{"name": "lookup"}],
            "params": {"echo_tool_calls": [[{"id": "call_1", "name": "lookup", "arguments": {"term": "oolong"}}]]},
            "steps": [{"name": "define", "prompt": "Define oolong"}]}
    r = httpx.post(site.url + "/v1/runs", headers={"Authorization": f"Bearer {site.member_a}"},
                   json={"spec": spec, "wait": True}, timeout=30)
    assert r.status_code == 200, r.text
    run_id = r.json()["id"]
    site.host.wait_for_events()
    page = signed_in(site, site.member_a).get(f"/ui/runs/{run_id}")
    assert page.status_code == 200
    rows = re.findall(r'<th scope="row" class="depth-(\d)">(\w+) <span class="name">([^<]*)</span>', page.text)
    # run > step > the turn that asked > its tool call, then the turn that answered
    assert [(int(d), kind, name) for d, kind, name in rows] == [
        (0, "run", "glossary"), (1, "step", "define"), (2, "call", "echo/gpt-4o-mini"),
        (3, "tool", "lookup"), (2, "call", "echo/gpt-4o-mini")], rows


def test_a_rerouted_call_is_tagged_with_the_model_it_was_sent_for(site: Site) -> None:
    assert site.chat(site.member_a, "echo/gpt-4o", reroute=True).status_code == 200
    run_id = site.newest_run(site.member_a)
    page = html.unescape(signed_in(site, site.member_a).get(f"/ui/runs/{run_id}").text)
    assert '<span class="tag">rerouted from echo/gpt-4o</span>' in page
    untouched = html.unescape(signed_in(site, site.member_a).get(f"/ui/runs/{site.runs['big']}").text)
    assert "rerouted from" not in untouched
