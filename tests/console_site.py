"""A served, seeded host for the console's tests (HTTP and browser) and scripts: two
workspaces, admin and member keys, priced calls, a denied call and a two-step agent
run with a retried call."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from synthhost import hookimpl
from synthhost.errors import Denied
from synthhost.gateway.keys import create_key
from synthhost.host import Host
from tests.gateway_server import serving

AGENT = {"name": "writer", "model": "echo/gpt-4o", "inputs": {"topic": {"default": "tea"}},
         "retry": {"max_attempts": 2, "initial_delay_s": 0.01, "max_delay_s": 0.01},
         "steps": [{"name": "draft", "prompt": "Draft about {{ topic }}"},
                   {"name": "polish", "prompt": "Polish: {{ draft }}", "params": {"echo_fail": ["timeout"]}}]}


class DenyWhenAsked:
    """Denies a call whose params say ``deny`` (an error run to filter for); moves one
    whose params say ``reroute`` to gpt-4o-mini."""

    __name__ = "console_deny"

    @hookimpl
    def pre_call(self, call: Any) -> None:
        if call.request.params.get("deny"):
            raise Denied("POLICY_DENIED", "denied by the test policy")
        if call.request.params.get("reroute"):  # a router's choice: the trace shows where it went
            call.request.model = "gpt-4o-mini"


class LookupTool:
    """A plugin tool, so agents run on the site can act (the trace shows ``tool`` spans)."""

    __name__ = "console_lookup"

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def lookup(term: str) -> str:
            """Look a term up in the glossary."""
            return f"{term}: a drink"

        register(lookup)


@dataclass
class Site:
    host: Host
    url: str
    admin_a: str
    member_a: str
    admin_b: str
    runs: dict[str, str] = field(default_factory=dict)  # label -> run id

    def chat(self, key: str, model: str, **extra: Any) -> httpx.Response:
        return httpx.post(self.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": model, "messages": [{"role": "user", "content": "hello"}], **extra},
                          timeout=30)

    def newest_run(self, key: str) -> str:
        self.host.wait_for_events()
        page = httpx.get(self.url + "/v1/traces", headers={"Authorization": f"Bearer {key}"},
                         params={"limit": 1}).json()
        run_id: str = page["data"][0]["id"]
        return run_id


def seed(site: Site) -> None:
    host = site.host
    host.flags.set("track_model_costs", True, workspace="a")
    host.flags.set("track_model_costs", True, workspace="b")
    for label, model, user in (("mini", "echo/gpt-4o-mini", "ada"), ("big", "echo/gpt-4o", None),
                               ("big2", "echo/gpt-4o", "ada")):
        assert site.chat(site.member_a, model, **({"user": user} if user else {})).status_code == 200
        site.runs[label] = site.newest_run(site.member_a)
    assert site.chat(site.member_a, "echo/gpt-4o", deny=True).status_code == 403
    site.runs["denied"] = site.newest_run(site.member_a)
    r = httpx.post(site.url + "/v1/runs", headers={"Authorization": f"Bearer {site.member_a}"},
                   json={"spec": AGENT, "wait": True}, timeout=30)
    assert r.status_code == 200, r.text
    site.runs["agent"] = r.json()["id"]
    assert site.chat(site.admin_b, "echo/gpt-4o").status_code == 200
    site.runs["b"] = site.newest_run(site.admin_b)
    host.wait_for_events()


@contextlib.contextmanager
def seeded_site(host: Host) -> Iterator[Site]:
    with serving(host) as url:
        site = Site(host, url, create_key(host.engine, "a", "admin")[0], create_key(host.engine, "a")[0],
                    create_key(host.engine, "b", "admin")[0])
        seed(site)
        yield site


def make_site_host(make_host: Any, **env: str) -> Host:
    import synthhost_cost

    host: Host = make_host(synthhost_cost, DenyWhenAsked(), LookupTool(), env=env or None)
    return host
