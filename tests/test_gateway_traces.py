"""``/v1/traces`` through HTTP: filters, cursor pagination, detail and export, and no
existence oracle across workspaces (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from synthhost import hookimpl
from synthhost.errors import Denied
from synthhost.gateway.keys import create_key
from synthhost.host import Host
from tests.gateway_server import serving


class Deny:
    __name__ = "acme_deny"

    @hookimpl
    def pre_call(self, call: Any) -> None:
        if call.request.params.get("deny"):
            raise Denied("POLICY_DENIED", "no")


@pytest.fixture
def served(make_host: Any) -> Iterator[tuple[Host, str, str, str]]:
    host = make_host(Deny())
    with serving(host) as url:
        key_a, _ = create_key(host.engine, "a")
        key_b, _ = create_key(host.engine, "b")
        yield host, url, key_a, key_b


def chat(url: str, key: str, model: str, **extra: Any) -> int:
    r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})
    return r.status_code


def get(url: str, key: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(url + path, headers={"Authorization": f"Bearer {key}"}, params=params)


def test_list_filters_and_paginates_by_cursor(served: Any) -> None:
    host, url, key_a, key_b = served
    for model in ("echo/alpha", "echo/beta", "echo/alpha", "echo/gamma", "echo/alpha"):
        assert chat(url, key_a, model) == 200
    assert chat(url, key_a, "echo/beta", deny=True) == 403
    assert chat(url, key_b, "echo/alpha") == 200
    host.wait_for_events()

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = get(url, key_a, "/v1/traces", **params).json()
        pages += 1
        seen += [r["id"] for r in page["data"]]
        assert len(page["data"]) <= 2
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert pages == 3 and len(seen) == len(set(seen)) == 6  # workspace a's runs, each once
    everything = get(url, key_a, "/v1/traces", limit=200).json()["data"]
    assert [r["id"] for r in everything] == seen  # newest first, same order as the pages

    alpha = get(url, key_a, "/v1/traces", model="alpha").json()["data"]
    assert len(alpha) == 3 and all("alpha" in r["name"] for r in alpha)
    assert len(get(url, key_a, "/v1/traces", model="echo/alpha").json()["data"]) == 3
    errors = get(url, key_a, "/v1/traces", status="error").json()["data"]
    assert [r["error_code"] for r in errors] == ["POLICY_DENIED"]
    assert len(get(url, key_a, "/v1/traces", q="gamma").json()["data"]) == 1
    assert get(url, key_a, "/v1/traces", q="%").json()["data"] == []  # a literal, not a wildcard
    assert len(get(url, key_a, "/v1/traces", since="1h").json()["data"]) == 6
    assert get(url, key_a, "/v1/traces", until="2000-01-01T00:00:00").json()["data"] == []
    assert len(get(url, key_b, "/v1/traces").json()["data"]) == 1


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "x"}, {"status": "weird"}, {"since": "yesterday"},
                                    {"cursor": "!!"}])
def test_bad_list_parameters_are_400(served: Any, params: dict[str, str]) -> None:
    _, url, key_a, _ = served
    r = get(url, key_a, "/v1/traces", **params)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_detail_and_export_are_the_cli_document_and_isolated(served: Any) -> None:
    host, url, key_a, key_b = served
    assert chat(url, key_a, "echo/alpha") == 200
    host.wait_for_events()
    run_id = get(url, key_a, "/v1/traces").json()["data"][0]["id"]
    doc = get(url, key_a, f"/v1/traces/{run_id}").json()
    assert doc["format"] == "synthhost.trace/v1" and doc["run"]["run_id"] == run_id
    assert doc["run"]["workspace"] == "a"
    assert [s["kind"] for s in doc["spans"]] == ["call"]
    exported = get(url, key_a, f"/v1/traces/{run_id}/export")
    assert re.fullmatch(rf'attachment; filename="trace-{run_id}-\d{{4}}-\d{{2}}-\d{{2}}\.json"',
                        exported.headers["content-disposition"])
    assert exported.json()["run"] == doc["run"]
    # Workspace b: the same 404 as for an id that does not exist.
    for path in (f"/v1/traces/{run_id}", f"/v1/traces/{run_id}/export"):
        theirs = get(url, key_b, path)
        missing = get(url, key_b, path.replace(run_id, "0" * 32))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json() == missing.json()
    assert httpx.get(url + f"/v1/traces/{run_id}").status_code == 401
