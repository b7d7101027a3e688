"""The synthralos pack: valid for st2, no dangling action refs, python actions that import
and run, workflows that produce the outputs the plugin reads. Plus the validator catching
what made the original pack unrunnable."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from synthhost_stackstorm import orquesta
from synthhost_stackstorm.pack import PackRunner, ParameterError, load_pack, pack_dir, validate_pack

REQUEST = {
    "prompt": "Be terse.\nWhat is 2 + 2?",
    "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2 + 2?"}],
    "provider": "openai", "model": "gpt-4o", "region": None, "parameters": {"max_tokens": 400, "temperature": 0.1},
}

# Sample input for every python action, and what its run() must answer.
SAMPLES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "classify_failure": ({"failure_reason": "upstream 503", "error_code": "PROVIDER_ERROR", "status_code": 503},
                         {"retry": True, "category": "server_error"}),
    "compute_backoff": ({"attempt": 3, "base_delay_s": 1, "max_delay_s": 30, "jitter": False},
                        {"delay_s": 4.0, "cap_s": 4.0}),
    "select_route": ({"original_request": REQUEST, "fallback_models": ["gpt-4o-mini"]},
                     {"found": True, "provider": "openai", "model": "gpt-4o-mini"}),
    "diagnose_failure": ({"original_request": REQUEST, "failure_type": "timeout"},
                         {"repairable": True, "strategy": "reduce_max_tokens"}),
    "repair_request": ({"strategy": "reduce_max_tokens", "original_request": REQUEST},
                       {"changed": True, "request": {"messages": REQUEST["messages"], "params": {"max_tokens": 200}}}),
    "record_failure": ({"provider": "openai", "error_code": "PROVIDER_TIMEOUT"},
                       {"key": "failures.openai.PROVIDER_TIMEOUT", "count": 1}),
}


@pytest.fixture(scope="module")
def runner() -> PackRunner:
    return PackRunner()


def test_the_shipped_pack_is_valid() -> None:
    assert validate_pack() == []
    pack = load_pack()
    assert pack.name == "synthralos" and pack.root == pack_dir()
    for key in ("name", "description", "version", "author"):
        assert pack.meta[key]
    for ref, action in pack.actions.items():
        assert {"name", "runner_type", "entry_point", "parameters"} <= set(action), ref
        assert (pack.root / "actions" / action["entry_point"]).is_file()


def test_every_action_a_workflow_calls_is_in_the_pack() -> None:
    pack = load_pack()
    workflows = {ref for ref, a in pack.actions.items() if a["runner_type"] == "orquesta"}
    assert workflows == {"synthralos.llm_retry", "synthralos.reroute_request", "synthralos.agent_recovery"}
    called = {target for ref in workflows for _, target, _ in orquesta.action_refs(pack.workflows[ref])}
    assert called and called <= set(pack.actions)
    python = {ref for ref, a in pack.actions.items() if a["runner_type"] == "python-script"}
    assert called <= python  # no core.* or other packs' actions
    assert {r["action"]["ref"] for r in pack.rules.values()} <= python
    assert {r["trigger"]["type"] for r in pack.rules.values()} == {"synthralos.agent_failure"}
    assert "synthralos.agent_failure" in pack.triggers


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_python_actions_import_and_run(runner: PackRunner, name: str) -> None:
    ref = f"synthralos.{name}"
    cls = runner.action_class(ref)
    base = runner.module(ref).Action
    assert issubclass(cls, base) and cls is not base  # st2common's Action in st2, the stand-in here
    params, expected = SAMPLES[name]
    status, result = runner.run(ref, params)
    assert status == "succeeded", result
    assert set(result) == {"exit_code", "result", "stdout", "stderr"}
    for key, value in expected.items():
        assert result["result"][key] == value, (key, result["result"])


def test_record_failure_counts_in_the_datastore() -> None:
    runner = PackRunner()
    for _ in range(3):
        runner.run("synthralos.record_failure", {"provider": "openai", "error_code": "PROVIDER_TIMEOUT"})
    assert runner.datastore.values == {"synthralos:failures.openai.PROVIDER_TIMEOUT": "3"}


def test_llm_retry_workflow(runner: PackRunner) -> None:
    base = {"original_request": REQUEST, "failure_reason": "boom", "base_delay_s": 0.5, "max_delay_s": 2}
    status, result = runner.run("synthralos.llm_retry", {**base, "error_code": "PROVIDER_RATE_LIMITED",
                                                         "status_code": 429, "retry_after_s": 1.5})
    assert status == "succeeded"
    out = result["output"]
    assert out["action"] == "retry" and 1.5 <= out["delay_s"] <= 2 and out["final_model"] == "gpt-4o"
    for stop in ({"error_code": "PROVIDER_AUTH", "status_code": 401}, {"attempt": 3, "max_attempts": 3},
                 {"retryable": False}):
        status, result = runner.run("synthralos.llm_retry", {**base, **stop})
        assert (status, result["output"]["action"], result["output"]["delay_s"]) == ("succeeded", "give_up", 0)


def test_reroute_request_workflow(runner: PackRunner) -> None:
    base = {"original_request": REQUEST, "failure_reason": "boom"}
    _, result = runner.run("synthralos.reroute_request", {**base, "fallback_providers": ["google", "anthropic"]})
    assert result["output"] == {
        "rerouted": True, "final_provider": "google", "final_model": "gemini-1.5-pro", "final_region": None,
        "reason": "equivalent on another provider after openai/gpt-4o failed"}
    tried = [{"provider": "google", "model": "gemini-1.5-pro", "region": "*"}]
    _, result = runner.run("synthralos.reroute_request", {**base, "fallback_providers": ["google", "anthropic"],
                                                          "tried_routes": tried})
    assert result["output"]["final_provider"] == "anthropic"
    _, result = runner.run("synthralos.reroute_request", {**base, "fallback_routes": [
        {"provider": "anthropic", "model": "gpt-4o"},  # invalid: anthropic does not serve gpt-4o
        {"provider": "openai", "model": "gpt-4o"},  # the route that failed
    ], "fallback_regions": ["eu-west-1"]})
    assert (result["output"]["final_provider"], result["output"]["final_region"]) == ("openai", "eu-west-1")
    _, result = runner.run("synthralos.reroute_request", base)
    assert result["output"]["rerouted"] is False and result["output"]["final_provider"] is None


def test_agent_recovery_workflow(runner: PackRunner) -> None:
    _, result = runner.run("synthralos.agent_recovery", {"original_request": REQUEST, "failure_type": "timeout",
                                                         "retry_delay": 0.5})
    out = result["output"]
    assert (out["action"], out["strategy"], out["delay_s"]) == ("repair", "reduce_max_tokens", 0.5)
    assert out["request"]["params"] == {"max_tokens": 200}
    long_prompt = {**REQUEST, "parameters": {}, "messages": [{"role": "user", "content": "word   " * 3000}]}
    _, result = runner.run("synthralos.agent_recovery", {"original_request": long_prompt, "max_prompt_chars": 500})
    out = result["output"]
    assert out["strategy"] == "simplify_query" and len(out["request"]["messages"][0]["content"]) <= 500
    _, result = runner.run("synthralos.agent_recovery", {"original_request": REQUEST, "failure_type": "auth"})
    assert (result["output"]["action"], result["output"]["request"]) == ("none", None)


def test_a_failing_task_fails_the_workflow_with_errors(tmp_path: Path) -> None:
    root = tmp_path / "synthralos"
    shutil.copytree(pack_dir(), root)
    (root / "actions" / "classify_failure.py").write_text(
        (root / "actions" / "classify_failure.py").read_text().replace("kind = category(", "kind = 1 / 0 or category("))
    status, result = PackRunner(root).run("synthralos.llm_retry", {"original_request": REQUEST,
                                                                   "failure_reason": "x"})
    assert status == "failed" and result["output"] is None
    assert result["errors"][0]["task_id"] == "classify"
    assert "ZeroDivisionError" in result["errors"][0]["result"]["stderr"]


def test_parameters_are_checked_like_st2(runner: PackRunner) -> None:
    with pytest.raises(ParameterError, match="'strategy' is a required property"):
        runner.run("synthralos.repair_request", {"original_request": REQUEST})
    with pytest.raises(ParameterError, match="is not one of"):
        runner.run("synthralos.repair_request", {"original_request": REQUEST, "strategy": "pray"})


# -- the validator catches broken packs --------------------------------------------------------


def broken(tmp_path: Path, edit: Any) -> list[str]:
    root = tmp_path / "synthralos"
    shutil.copytree(pack_dir(), root)
    edit(root)
    return validate_pack(root)


def _edit_yaml(path: Path, change: Any) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_validator_catches_a_workflow_calling_an_unwritten_action(tmp_path: Path) -> None:
    def edit(root: Path) -> None:  # what the original pack did ten times
        _edit_yaml(root / "actions/workflows/llm_retry.yaml",
                   lambda d: d["tasks"]["classify"].update(action="synthralos.analyze_agent_failure"))
    problems = broken(tmp_path, edit)
    assert any("calls 'synthralos.analyze_agent_failure', which is not an action of this pack" in p for p in problems)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda r: (r / "actions/compute_backoff.py").unlink(),
         "entry_point actions/compute_backoff.py does not exist"),
        (lambda r: _edit_yaml(r / "pack.yaml", lambda d: d.update(version="1.0")), "is not semver"),
        (lambda r: _edit_yaml(r / "pack.yaml", lambda d: d.pop("author")), "author is required"),
        (lambda r: _edit_yaml(r / "actions/select_route.yaml", lambda d: d.pop("runner_type")),
         "runner_type is required"),
        (lambda r: _edit_yaml(r / "actions/llm_retry.yaml", lambda d: d["parameters"].pop("context")),
         "workflow input"),
        (lambda r: _edit_yaml(r / "actions/workflows/reroute_request.yaml",
                              lambda d: d["tasks"]["select_route"]["input"].update(bogus=1)),
         "passes 'bogus', which synthralos.select_route does not take"),
        (lambda r: _edit_yaml(r / "actions/workflows/agent_recovery.yaml",
                              lambda d: d["tasks"]["repair"]["input"].pop("strategy")),
         "does not pass synthralos.repair_request's required 'strategy'"),
        (lambda r: _edit_yaml(r / "actions/workflows/agent_recovery.yaml",
                              lambda d: d["tasks"]["diagnose"]["next"][0].update(do="reapir")),
         "goes to task 'reapir', which does not exist"),
        (lambda r: _edit_yaml(r / "actions/workflows/llm_retry.yaml",
                              lambda d: d["tasks"]["backoff"]["next"][0].update(when="{{ succeeded() }}")),
         "Jinja is outside the checked subset"),
        (lambda r: _edit_yaml(r / "rules/on_agent_failure.yaml",
                              lambda d: d["action"].update(ref="synthralos.notify")), "not an action of this pack"),
        (lambda r: _edit_yaml(r / "actions/compute_backoff.yaml",
                              lambda d: d["parameters"]["attempt"].update(default="one")), "is not integer"),
        (lambda r: (r / "actions/repair_request.py").write_text("def run():\n    pass\n"),
         "defines no Action subclass"),
    ],
)
def test_validator_catches(tmp_path: Path, edit: Any, expected: str) -> None:
    problems = broken(tmp_path, edit)
    assert any(expected in p for p in problems), problems


# -- the Orquesta subset -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("ctx().a", 1),
        ("ctx(a) = 1 and not ctx().b", True),
        ("ctx().c.d >= 2 or false", True),
        ("succeeded() and result().result.ok", True),
        ("failed()", False),
        ("'x' != \"y\"", True),
        ("(1 < 2) and null = null", True),
    ],
)
def test_expressions(expression: str, value: Any) -> None:
    scope = orquesta.Scope({"a": 1, "b": False, "c": {"d": 2}}, {"result": {"ok": True}}, "succeeded")
    assert orquesta.compile_expression(expression)(scope) == value


@pytest.mark.parametrize("expression", ["$.a", "ctx().a + 1", "len(ctx().a)", "ctx().missing", "ctx().a.b"])
def test_unsupported_or_failing_expressions_are_refused(expression: str) -> None:
    scope = orquesta.Scope({"a": 1})
    with pytest.raises(orquesta.WorkflowError):
        orquesta.compile_expression(expression)(scope)


def test_cli() -> None:
    from synthhost_stackstorm.cli import stackstorm

    runner = CliRunner()
    assert runner.invoke(stackstorm, ["pack-path"]).output.strip() == str(pack_dir())
    result = runner.invoke(stackstorm, ["validate-pack"])
    assert result.exit_code == 0 and result.output.strip().endswith(": ok")
    result = runner.invoke(stackstorm, ["dry-run", "llm_retry", "--params",
                                        '{"original_request": {"model": "m"}, "failure_reason": "x", '
                                        '"error_code": "PROVIDER_AUTH"}'])
    assert result.exit_code == 0 and '"action": "give_up"' in result.output
