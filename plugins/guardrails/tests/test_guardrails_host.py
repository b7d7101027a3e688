"""The guardrails plugin in a real host, on SQLite and PostgreSQL: input guards act
before the provider, output guards before the caller, after the cost plugin; every
violation is on the span and in an event, never with the offending text."""

from __future__ import annotations

import contextlib
import json
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa

import synthhost_cost
import synthhost_guardrails
from synthhost import Call, Denied, ErrorCode, Request, Response, hookimpl
from synthhost.host import Host
from synthhost.providers.echo import EchoProvider
from synthhost.registry import RegisterProvider
from synthhost_guardrails import FLAG, apply_guards, remove_guards, runtime
from synthhost_guardrails.store import apply_document

pytestmark = pytest.mark.anyio

KEY = "sk-proj-" + "aB3dE5fG7hJ9kL1mN3pQ5rS7"
EMAIL = "jane.roe@example.com"

MakeHost = Callable[..., Host]


def echo(host: Host) -> EchoProvider:
    return host.provider("echo")  # type: ignore[return-value]


async def events(host: Host, event_type: str = "guardrail_violation") -> list[dict[str, Any]]:
    await host.writer.flush()
    table = sa.table(
        "event_logs",
        sa.column("event_type"),
        sa.column("status"),
        sa.column("workspace_id"),
        sa.column("span_id"),
        sa.column("context", sa.JSON),
        sa.column("created_at"),
    )
    query = sa.select(table).where(table.c.event_type == event_type).order_by(table.c.created_at)
    with host.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


async def call_spans(host: Host) -> list[dict[str, Any]]:
    await host.writer.flush()
    table = sa.table(
        "spans",
        sa.column("id"),
        sa.column("kind"),
        sa.column("status"),
        sa.column("error_code"),
        sa.column("attributes", sa.JSON),
        sa.column("started_at"),
    )
    query = sa.select(table).where(table.c.kind == "call").order_by(table.c.started_at)
    with host.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


@contextlib.asynccontextmanager
async def guarded(make_host: MakeHost, *plugins: Any) -> AsyncIterator[Host]:
    """A started host with the plugin on for every workspace."""
    async with make_host(synthhost_guardrails, *plugins) as host:
        host.flags.set(FLAG, True)
        yield host


async def test_flag_off_does_nothing(make_host: MakeHost) -> None:
    async with make_host(synthhost_guardrails) as host:
        reply = await host.complete(model="echo/m", messages=f"key {KEY}", params={"echo_reply": KEY})
        assert reply.text == KEY
        assert echo(host).calls[-1].messages[0]["content"] == f"key {KEY}"
        assert not host.is_active("guardrails", "default")
        assert await events(host) == []


async def test_default_set_masks_secrets_both_ways(make_host: MakeHost) -> None:
    async with guarded(make_host) as host:
        reply = await host.complete(
            model="echo/m", messages=f"deploy with {KEY}", params={"echo_reply": f"sure, using {KEY}"}
        )
        assert echo(host).calls[-1].messages == [{"role": "user", "content": "deploy with [API_KEY]"}]
        assert reply.text == "sure, using [API_KEY]"
        found = await events(host)
        assert [(e["status"], e["context"]["where"], e["context"]["kinds"]) for e in found] == [
            ("fixed", "input", ["api_key"]),
            ("fixed", "output", ["api_key"]),
        ]
        assert found[0]["context"]["set"] == "default"
        [span] = await call_spans(host)
        assert span["status"] == "ok"
        assert span["attributes"]["guardrails.set"] == "default"
        assert [v["where"] for v in span["attributes"]["guardrails.violations"]] == ["input", "output"]
        stored = json.dumps([span["attributes"], [e["context"] for e in found]])
        assert KEY not in stored  # neither the prompt nor the answer kept it


async def test_input_exception_stops_before_the_provider(make_host: MakeHost) -> None:
    async with guarded(make_host) as host:
        apply_guards(host, "input: [{validator: no_pii, on_fail: exception}]\n", workspace="default")
        with pytest.raises(Denied) as info:
            await host.complete(
                model="echo/m",
                messages=[{"role": "system", "content": "hi"}, {"role": "user", "content": f"I am {EMAIL}"}],
            )
        assert echo(host).call_count == 0
        denied = info.value
        assert denied.code == ErrorCode.GUARDRAIL_VIOLATION
        assert denied.message == "guardrail no_pii failed on input (message 1): email"
        assert denied.details == {
            "set": "workspace default v1",
            "validator": "no_pii",
            "where": "input",
            "on_fail": "exception",
            "kinds": ["email"],
            "count": 1,
            "messages": [1],
        }
        [event] = await events(host)
        assert event["status"] == "blocked"
        [span] = await call_spans(host)
        assert span["error_code"] == ErrorCode.GUARDRAIL_VIOLATION
        assert EMAIL not in json.dumps(span["attributes"])  # masked before the denial


async def test_input_fix_changes_what_the_provider_receives(make_host: MakeHost) -> None:
    async with guarded(make_host) as host:
        apply_guards(host, "input: [{validator: no_pii, on_fail: fix, roles: [user]}]\n")
        messages = [
            {"role": "system", "content": f"support desk {EMAIL}"},
            {"role": "user", "content": f"card 4111 1111 1111 1111, mail {EMAIL}"},
        ]
        reply = await host.complete(model="echo/m", messages=messages)
        sent = echo(host).calls[-1].messages
        assert sent == [
            {"role": "system", "content": f"support desk {EMAIL}"},  # not a selected role
            {"role": "user", "content": "card [CARD], mail [EMAIL]"},
        ]
        assert messages[1]["content"].startswith("card 4111")  # the caller's list is untouched
        assert reply.text == "echo: card [CARD], mail [EMAIL]"


async def test_output_fix_and_exception_on_the_reply(make_host: MakeHost) -> None:
    async with guarded(make_host) as host:
        apply_guards(
            host,
            "output:\n"
            "  - {validator: ban_list, on_fail: fix, args: {words: [darn]}}\n"
            "  - {validator: valid_json, on_fail: exception}\n",
        )
        reply = await host.complete(model="echo/m", messages="hi", params={"echo_reply": '{"a": "darn"}'})
        assert reply.text == '{"a": "[BANNED]"}'
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/m", messages="hi", params={"echo_reply": "Darn, no JSON"})
        assert info.value.code == ErrorCode.GUARDRAIL_VIOLATION
        assert info.value.details["where"] == "output"
        assert info.value.details["validator"] == "valid_json"
        assert echo(host).call_count == 2
        assert [e["status"] for e in await events(host)] == ["fixed", "fixed", "blocked"]


async def test_output_exception_masks_the_rejected_answer(make_host: MakeHost) -> None:
    async with guarded(make_host) as host:
        apply_guards(host, "output: [{validator: no_secrets}]\n")
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/m", messages="hi", params={"echo_reply": f"here: {KEY}"})
        rejected = info.value.response  # type: ignore[attr-defined]
        assert rejected.text == "here: [API_KEY]"


async def test_warn_and_noop_record_and_continue(make_host: MakeHost, caplog: pytest.LogCaptureFixture) -> None:
    async with guarded(make_host) as host:
        apply_guards(
            host,
            "input: [{validator: no_pii, on_fail: warn}]\n"
            "output: [{validator: regex_match, on_fail: noop, args: {regex: '^OK'}}]\n",
        )
        with caplog.at_level("WARNING", logger="synthhost.guardrails"):
            reply = await host.complete(model="echo/m", messages=f"from {EMAIL}")
        assert reply.text == f"echo: from {EMAIL}"  # unchanged
        assert echo(host).calls[-1].messages[0]["content"] == f"from {EMAIL}"
        assert [(e["status"], e["context"]["validator"]) for e in await events(host)] == [
            ("warning", "no_pii"),
            ("noop", "regex_match"),
        ]
        [span] = await call_spans(host)
        assert span["status"] == "ok"
        assert [v["on_fail"] for v in span["attributes"]["guardrails.violations"]] == ["warn", "noop"]
        assert "guardrail no_pii failed on input (message 0): email" in caplog.text
        assert EMAIL not in caplog.text


async def test_a_rejected_answer_is_still_costed(make_host: MakeHost) -> None:
    """post_call order: cost (Stage.COST) runs before the output guard's denial."""
    from synthhost_cost.models import COST_LOGS

    async with guarded(make_host, synthhost_cost) as host:
        host.flags.set("track_model_costs", True)
        apply_guards(host, "output: [{validator: no_secrets, on_fail: exception}]\n")
        with pytest.raises(Denied):
            await host.complete(
                model="echo/gpt-4o-mini",
                messages="hi",
                params={"echo_reply": KEY, "echo_usage": {"input_tokens": 1000, "output_tokens": 500}},
            )
        await host.writer.flush()
        with host.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.select(COST_LOGS)).mappings()]
        assert [(r["status"], r["output_tokens"], r["priced"]) for r in rows] == [("ok", 500, True)]
        assert rows[0]["total_cost"] > 0
        [span] = await call_spans(host)
        assert span["error_code"] == ErrorCode.GUARDRAIL_VIOLATION


async def test_a_retried_call_records_its_violation_once(make_host: MakeHost) -> None:
    async with guarded(make_host) as host:
        await host.complete(model="echo/m", messages=f"key {KEY}", params={"echo_fail": ["server_error"]})
        assert echo(host).call_count == 2
        assert all(r.messages[0]["content"] == "key [API_KEY]" for r in echo(host).calls)
        [span] = await call_spans(host)
        assert span["attributes"]["attempts"] == 2
        assert len(span["attributes"]["guardrails.violations"]) == 1


async def test_workspaces_global_fallback_and_removal(make_host: MakeHost) -> None:
    async with guarded(make_host) as host:
        strict = "input: [{validator: no_pii}]\n"
        first = apply_guards(host, strict, workspace="acme", actor="ops")
        assert (first.workspace, first.version, first.changed) == ("acme", 1, True)
        assert apply_guards(host, strict, workspace="acme").changed is False  # same document
        apply_guards(host, "input: [{validator: ban_list, args: {words: [foo]}}]\n", global_=True)

        with pytest.raises(Denied):
            await host.complete(model="echo/m", messages=EMAIL, workspace="acme")
        await host.complete(model="echo/m", messages=EMAIL, workspace="beta")  # global set: no PII check
        with pytest.raises(Denied):
            await host.complete(model="echo/m", messages="foo", workspace="beta")
        assert runtime(host).pipeline_for("acme").label == "workspace acme v1"
        assert runtime(host).pipeline_for("beta").label == "global v1"

        removed = remove_guards(host, workspace="acme")
        assert removed.version == 2
        assert runtime(host).pipeline_for("acme").label == "global v1"
        remove_guards(host, global_=True)
        assert runtime(host).pipeline_for("acme").label == "default"
        await host.complete(model="echo/m", messages=EMAIL, workspace="acme")


async def test_changes_from_another_process_apply(make_host: MakeHost) -> None:
    async with guarded(make_host) as host:
        rt = runtime(host)
        assert rt.pipeline_for("default").label == "default"
        other = make_host(synthhost_guardrails)  # another process: same database, own runtime
        apply_guards(other, "output: [{validator: non_empty}]\n")
        assert rt.poll_once() is True
        assert rt.pipeline_for("default").label == "workspace default v1"
        assert rt.poll_once() is False
        with pytest.raises(Denied):
            await host.complete(model="echo/m", messages="hi", params={"echo_reply": " "})


async def test_a_set_that_cannot_run_here_denies(make_host: MakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """Applied where Guardrails AI was installed, run where it is not: fail closed."""
    import sys

    monkeypatch.setitem(sys.modules, "guardrails", None)
    async with guarded(make_host) as host:
        apply_document(
            host.engine, "default", {"input": [{"validator": "hub:regex_match", "on_fail": "fix"}], "output": []}, None
        )
        runtime(host).reload()
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/m", messages="hi")
        assert info.value.code == ErrorCode.PLUGIN_ERROR
        assert "needs Guardrails AI" in info.value.message
        assert echo(host).call_count == 0
        _, check = host.registry.health_checks["guardrails"]
        ok, detail = check(host)  # type: ignore[misc]
        assert not ok and "1 unusable" in detail


class RawProvider:
    """Answers like a real provider: the raw payload repeats the text."""

    __name__ = "raw_provider"

    @hookimpl
    def register_providers(self, register: RegisterProvider) -> None:
        async def complete(request: Request, *, call: Call) -> Response:
            text = request.params["reply"]
            return Response(text=text, model=request.model, provider="raw", raw={"content": text})

        register("raw", lambda host: types.SimpleNamespace(complete=complete))


async def test_a_fixed_answer_drops_the_raw_payload(make_host: MakeHost) -> None:
    async with guarded(make_host, RawProvider()) as host:
        fixed = await host.complete(model="raw/m", messages="hi", params={"reply": f"key {KEY}"})
        assert (fixed.text, fixed.raw) == ("key [API_KEY]", None)
        clean = await host.complete(model="raw/m", messages="hi", params={"reply": "nothing"})
        assert clean.raw == {"content": "nothing"}
