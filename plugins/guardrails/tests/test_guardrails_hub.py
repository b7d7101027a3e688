"""The Guardrails AI adapter (``hub:<name>``) without Guardrails AI installed.

The real library is an optional ~350 MB extra that CI does not install, so these tests
drive the adapter against a small stand-in with the same surface (``Guard``,
``OnFailAction``, ``settings``, ``validators_registry``) and the same outcome semantics
as guardrails-ai 0.11 (FIX: passed with the fix value, summary still "fail"; NOOP:
not passed, text unchanged; ``Guard()`` re-reads ``~/.guardrailsrc``, which turns
metrics back on). What the real library does was checked by hand: see the README."""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import synthhost_guardrails
from synthhost import Denied, ErrorCode
from synthhost.host import Host
from synthhost.providers.echo import EchoProvider
from synthhost_guardrails import FLAG, apply_guards
from synthhost_guardrails.guardset import GuardSetError, compile_document
from synthhost_guardrails.hub import HubError, HubValidator


class FakeGuardrails:
    """The parts of guardrails-ai 0.11 the adapter touches."""

    def __init__(self) -> None:
        self.settings = types.SimpleNamespace(rc=types.SimpleNamespace(enable_metrics=True), disable_tracing=None)
        self.registry: dict[str, type] = {}
        self.guards: list[Any] = []
        self.validated: list[str] = []
        fake = self

        class OnFailAction:
            FIX = "fix"
            NOOP = "noop"
            EXCEPTION = "exception"

        class UpperStart:
            """Passes when the text starts with a capital; its fix capitalises."""

            def __init__(self, on_fail: str, min_len: int = 1) -> None:
                self.on_fail = on_fail
                self.min_len = min_len
                self.metrics_when_built = fake.settings.rc.enable_metrics

            def check(self, text: str) -> tuple[bool, str | None]:
                ok = len(text) >= self.min_len and text[:1].isupper()
                return ok, (text[:1].upper() + text[1:]) if text else None

        class Guard:
            def __init__(self, history_max_length: int | None = None) -> None:
                fake.settings.rc.enable_metrics = True  # what re-reading a missing rc file does
                self.allow_metrics: bool | None = None
                self.validators: list[Any] = []
                fake.guards.append(self)

            def configure(self, allow_metrics_collection: bool | None = None) -> None:
                self.allow_metrics = allow_metrics_collection

            def use(self, validator: Any) -> Guard:
                self.validators.append(validator)
                return self

            def validate(self, text: str) -> Any:
                fake.validated.append(text)
                (v,) = self.validators
                ok, fix_value = v.check(text)
                summary = types.SimpleNamespace(validator_name="UpperStart", validator_status="pass" if ok else "fail")
                if ok:
                    return types.SimpleNamespace(validation_passed=True, validated_output=text, validation_summaries=[])
                if v.on_fail == OnFailAction.FIX and fix_value is not None:
                    passed, output = True, fix_value
                else:
                    passed, output = False, text
                return types.SimpleNamespace(
                    validation_passed=passed, validated_output=output, validation_summaries=[summary]
                )

        self.registry["guardrails/upper_start"] = UpperStart
        self.modules = {
            "guardrails": types.SimpleNamespace(Guard=Guard, OnFailAction=OnFailAction),
            "guardrails.settings": types.SimpleNamespace(settings=self.settings),
            "guardrails.validator_base": types.SimpleNamespace(validators_registry=self.registry),
        }


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeGuardrails:
    gr = FakeGuardrails()
    for name, module in gr.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "unset-below")
    monkeypatch.delenv("LITELLM_LOCAL_MODEL_COST_MAP")  # restored (absent) after the test
    return gr


def test_offline_configuration(fake: FakeGuardrails) -> None:
    v = HubValidator("upper_start", {}, "noop")
    (guard,) = fake.guards
    assert guard.allow_metrics is False
    assert guard.validators[0].metrics_when_built is False  # forced off after Guard() re-read the rc
    assert fake.settings.rc.enable_metrics is False
    assert fake.settings.disable_tracing is True
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert v.validate("Fine").ok


def test_outcomes_map_to_results(fake: FakeGuardrails) -> None:
    noop = HubValidator("guardrails/upper_start", {"min_len": 2}, "noop")
    r = noop.validate("lower", fix=True)
    assert (r.ok, r.kinds, r.count, r.fixed) == (False, ("UpperStart",), 1, None)
    fix = HubValidator("upper-start", {}, "fix")
    r = fix.validate("lower", fix=True)
    assert (r.ok, r.fixed) == (False, "Lower")
    r = fix.validate("", fix=True)  # failed and no fix value: not fixed
    assert (r.ok, r.fixed) == (False, None)


def test_resolution_errors(fake: FakeGuardrails) -> None:
    with pytest.raises(
        HubError, match=r"validator guardrails/not_there is not installed: pip install guardrails-ai-not-there"
    ):
        HubValidator("not-there", {}, "noop")
    fake.registry["acme/thing"] = fake.registry["guardrails/upper_start"]
    assert HubValidator("acme/thing", {}, "noop").validate("Ok").ok
    with pytest.raises(HubError, match=r"bad args: .*unexpected keyword argument 'nope'"):
        HubValidator("upper_start", {"nope": 1}, "noop")


def test_in_a_guard_set(fake: FakeGuardrails) -> None:
    p = compile_document({"output": [{"validator": "hub:upper_start", "on_fail": "fix"}]}, "t")
    assert p.output_threaded and not p.input_threaded
    with pytest.raises(GuardSetError, match=r"output\[0\] \(hub:upper_start\): bad args"):
        compile_document({"output": [{"validator": "hub:upper_start", "args": {"x": 1}}]}, "t")


@contextlib.asynccontextmanager
async def guarded(make_host: Callable[..., Host]) -> AsyncIterator[Host]:
    async with make_host(synthhost_guardrails) as host:
        host.flags.set(FLAG, True)
        yield host


@pytest.mark.anyio
async def test_hub_validators_run_in_a_call(make_host: Callable[..., Host], fake: FakeGuardrails) -> None:
    async with guarded(make_host) as host:
        apply_guards(
            host,
            "input: [{validator: 'hub:upper_start', on_fail: exception, roles: [user]}]\n"
            "output: [{validator: 'hub:upper_start', on_fail: fix}]\n",
        )
        provider: EchoProvider = host.provider("echo")  # type: ignore[assignment]
        reply = await host.complete(model="echo/m", messages="Hello", params={"echo_reply": "lower reply"})
        assert reply.text == "Lower reply"
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/m", messages="hello")
        assert info.value.code == ErrorCode.GUARDRAIL_VIOLATION
        assert info.value.message == "guardrail hub:upper_start failed on input (message 0): UpperStart"
        assert provider.call_count == 1
        assert fake.validated == ["Hello", "lower reply", "hello"]
