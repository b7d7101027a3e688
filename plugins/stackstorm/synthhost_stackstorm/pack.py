"""The ``synthralos`` StackStorm pack: where it is, what a valid pack is, and a local run.

:func:`validate_pack` checks what st2 would refuse at registration or at run time:
``pack.yaml`` (name, description, semver version, author), every action's metadata
(name, runner_type, entry_point, parameters with known types and matching defaults),
that every entry point exists, that every workflow stays inside the checked Orquesta
subset (:mod:`synthhost_stackstorm.orquesta`), calls only actions *of this pack* with
known and required parameters, takes exactly its action's parameters as input; rules
point at pack actions and known triggers; python actions parse and define a class with
``run``. :class:`PackRunner` then runs actions for real (python actions imported and
called; workflows interpreted), which the st2api fake uses.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import re
import sys
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from synthhost_stackstorm import orquesta

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
PACK_NAME = re.compile(r"^[a-z0-9_]+$")
RUNNERS = frozenset({"python-script", "orquesta", "local-shell-cmd", "local-shell-script", "remote-shell-cmd",
                     "remote-shell-script", "http-request", "action-chain", "noop", "inquirer"})
NEEDS_ENTRY_POINT = frozenset({"python-script", "orquesta", "local-shell-script", "remote-shell-script",
                               "action-chain"})
PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "null": (type(None),),
}
PARAM_KEYS = frozenset({"type", "required", "default", "description", "secret", "immutable", "enum", "position",
                        "items", "properties", "additionalProperties", "minimum", "maximum", "pattern"})
BUILTIN_TRIGGERS = frozenset({"core.st2.webhook", "core.st2.IntervalTimer", "core.st2.DateTimer", "core.st2.CronTimer",
                              "core.st2.generic.actiontrigger", "core.st2.generic.notifytrigger"})


def pack_dir() -> Path:
    """The pack shipped with this plugin: inside the wheel, or ``plugins/stackstorm/pack``
    in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "pack" / "synthralos", here.parent / "pack" / "synthralos"):
        if (candidate / "pack.yaml").is_file():
            return candidate
    raise FileNotFoundError("the synthralos pack is not installed next to synthhost_stackstorm")


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def type_ok(value: Any, declared: Any) -> bool:
    names = declared if isinstance(declared, list) else [declared]
    for name in names:
        types = PARAM_TYPES.get(str(name))
        if types is None:
            continue
        # JSON schema: a boolean is not a number
        if (bool in types or not isinstance(value, bool)) and isinstance(value, types):
            return True
    return False


@dataclass
class Pack:
    root: Path
    meta: dict[str, Any]
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)  # ref -> metadata (+ "_file")
    workflows: dict[str, Any] = field(default_factory=dict)  # ref -> parsed workflow
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.meta.get("ref") or self.meta.get("name") or self.root.name)


def load_pack(root: str | Path | None = None) -> Pack:
    """Read a pack; what cannot be read goes to ``pack.problems``."""
    path = Path(root) if root is not None else pack_dir()
    problems: list[str] = []
    try:
        meta = _load_yaml(path / "pack.yaml")
    except (OSError, yaml.YAMLError) as exc:
        return Pack(path, {}, problems=[f"pack.yaml: {exc}"])
    if not isinstance(meta, dict):
        return Pack(path, {}, problems=["pack.yaml: not a mapping"])
    pack = Pack(path, meta, problems=problems)
    for kind, target in (("actions", pack.actions), ("rules", pack.rules), ("triggers", pack.triggers)):
        directory = path / kind
        for file in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]) if directory.is_dir() else []:
            rel = file.relative_to(path)
            try:
                doc = _load_yaml(file)
            except yaml.YAMLError as exc:
                problems.append(f"{rel}: {exc}")
                continue
            if not isinstance(doc, dict) or not doc.get("name"):
                problems.append(f"{rel}: not a mapping with a name")
                continue
            doc["_file"] = str(rel)
            target[f"{doc.get('pack') or pack.name}.{doc['name']}"] = doc
    for ref, action in pack.actions.items():
        if action.get("runner_type") == "orquesta" and isinstance(action.get("entry_point"), str):
            file = path / "actions" / action["entry_point"]
            if file.is_file():
                try:
                    pack.workflows[ref] = _load_yaml(file)
                except yaml.YAMLError as exc:
                    problems.append(f"actions/{action['entry_point']}: {exc}")
    return pack


def _check_parameters(where: str, params: Any) -> list[str]:
    if params is None:
        return []
    if not isinstance(params, Mapping):
        return [f"{where}: parameters must be a mapping"]
    problems: list[str] = []
    for name, spec in params.items():
        if not isinstance(spec, Mapping):
            problems.append(f"{where}: parameter {name}: not a mapping")
            continue
        unknown = set(spec) - PARAM_KEYS
        if unknown:
            problems.append(f"{where}: parameter {name}: unknown keys {sorted(unknown)}")
        declared = spec.get("type")
        names = declared if isinstance(declared, list) else [declared]
        if declared is None or any(n not in PARAM_TYPES for n in names):
            problems.append(f"{where}: parameter {name}: type {declared!r} is not one of {sorted(PARAM_TYPES)}")
            continue
        if "default" in spec and spec["default"] is not None and not type_ok(spec["default"], declared):
            problems.append(f"{where}: parameter {name}: default {spec['default']!r} is not {declared}")
        if "enum" in spec and "default" in spec and spec["default"] not in spec["enum"]:
            problems.append(f"{where}: parameter {name}: default {spec['default']!r} not in its enum")
        if "required" in spec and not isinstance(spec["required"], bool):
            problems.append(f"{where}: parameter {name}: required must be true or false")
    return problems


def _python_action_problems(where: str, file: Path) -> list[str]:
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    except SyntaxError as exc:
        return [f"{where}: {file.name} does not parse: {exc}"]
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
        if "Action" in bases and any(isinstance(f, ast.FunctionDef) and f.name == "run" for f in node.body):
            return []
    return [f"{where}: {file.name} defines no Action subclass with a run() method"]


def validate_pack(root: str | Path | None = None) -> list[str]:
    """Every problem st2 would refuse or trip over; empty when the pack is sound."""
    pack = load_pack(root)
    problems = list(pack.problems)
    meta = pack.meta
    if not meta:
        return problems
    for key in ("name", "description", "version", "author"):
        if not meta.get(key):
            problems.append(f"pack.yaml: {key} is required")
    if meta.get("version") and not SEMVER.match(str(meta["version"])):
        problems.append(f"pack.yaml: version {meta['version']!r} is not semver (MAJOR.MINOR.PATCH)")
    if not PACK_NAME.match(pack.name):
        problems.append(f"pack.yaml: ref/name {pack.name!r} must match [a-z0-9_]+")
    if not pack.actions:
        problems.append("actions/: no action metadata")
    for ref, action in pack.actions.items():
        where = action["_file"]
        if action.get("pack", pack.name) != pack.name:
            problems.append(f"{where}: pack {action.get('pack')!r} is not {pack.name!r}")
        for key in ("name", "runner_type"):
            if not action.get(key):
                problems.append(f"{where}: {key} is required")
        runner = action.get("runner_type")
        if runner and runner not in RUNNERS:
            problems.append(f"{where}: unknown runner_type {runner!r}")
        if "parameters" not in action:
            problems.append(f"{where}: parameters is required (an empty mapping if none)")
        problems.extend(_check_parameters(where, action.get("parameters")))
        entry = action.get("entry_point")
        if runner in NEEDS_ENTRY_POINT:
            if not isinstance(entry, str) or not entry:
                problems.append(f"{where}: entry_point is required for {runner}")
                continue
            file = pack.root / "actions" / entry
            if not file.is_file():
                problems.append(f"{where}: entry_point actions/{entry} does not exist")
                continue
            if runner == "python-script":
                problems.extend(_python_action_problems(where, file))
        if runner == "orquesta" and ref in pack.workflows:
            problems.extend(_workflow_problems(pack, ref, action))
    for rule in pack.rules.values():
        where = rule["_file"]
        trigger = (rule.get("trigger") or {}).get("type") if isinstance(rule.get("trigger"), Mapping) else None
        target = (rule.get("action") or {}).get("ref") if isinstance(rule.get("action"), Mapping) else None
        if not trigger:
            problems.append(f"{where}: trigger.type is required")
        elif trigger not in pack.triggers and trigger not in BUILTIN_TRIGGERS:
            problems.append(f"{where}: trigger {trigger!r} is neither in triggers/ nor built in")
        if not target:
            problems.append(f"{where}: action.ref is required")
        elif target not in pack.actions:
            problems.append(f"{where}: action {target!r} is not an action of this pack")
        else:
            declared = (pack.actions[target].get("parameters") or {})
            for name in (rule["action"].get("parameters") or {}):
                if name not in declared:
                    problems.append(f"{where}: {target} has no parameter {name!r}")
    for trigger in pack.triggers.values():
        if not isinstance(trigger.get("payload_schema", {}), Mapping):
            problems.append(f"{trigger['_file']}: payload_schema must be a mapping")
    return problems


def _workflow_problems(pack: Pack, ref: str, action: Mapping[str, Any]) -> list[str]:
    where = f"actions/{action['entry_point']}"
    spec = pack.workflows[ref]
    problems = [f"{where}: {p}" for p in orquesta.check_workflow(spec)]
    if not isinstance(spec, Mapping):
        return problems
    inputs = {name for name, _, _ in orquesta._named(spec.get("input"), "input")} if not problems else set()
    declared = set((action.get("parameters") or {}).keys())
    if not problems and inputs != declared:
        problems.append(f"{where}: workflow input {sorted(inputs)} differs from {ref} parameters {sorted(declared)}")
    for task, target, task_input in orquesta.action_refs(spec):
        if target not in pack.actions:
            problems.append(f"{where}: task {task} calls {target!r}, which is not an action of this pack")
            continue
        params = pack.actions[target].get("parameters") or {}
        for name in task_input:
            if name not in params:
                problems.append(f"{where}: task {task} passes {name!r}, which {target} does not take")
        for name, spec_ in params.items():
            if isinstance(spec_, Mapping) and spec_.get("required") and name not in task_input:
                problems.append(f"{where}: task {task} does not pass {target}'s required {name!r}")
    return problems


# -- running actions locally -----------------------------------------------------------------


class ParameterError(ValueError):
    """Parameters st2 would reject with 400 (missing, unexpected, wrong type, not in enum)."""


def resolve_parameters(metadata: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    declared: Mapping[str, Any] = metadata.get("parameters") or {}
    unexpected = sorted(set(given) - set(declared))
    if unexpected:
        raise ParameterError(f"Additional properties are not allowed ({', '.join(map(repr, unexpected))} "
                             f"{'was' if len(unexpected) == 1 else 'were'} unexpected)")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            value = given[name]
        elif "default" in spec:
            value = copy.deepcopy(spec["default"])
        elif spec.get("required"):
            raise ParameterError(f"'{name}' is a required property")
        else:
            continue
        if value is not None and not type_ok(value, spec.get("type")):
            raise ParameterError(f"{value!r} is not of type '{spec.get('type')}' (parameter {name})")
        if value is None and name in given and not type_ok(None, spec.get("type")):
            raise ParameterError(f"None is not of type '{spec.get('type')}' (parameter {name})")
        if "enum" in spec and value not in spec["enum"]:
            raise ParameterError(f"{value!r} is not one of {spec['enum']!r} (parameter {name})")
        values[name] = value
    return values


class MemoryDatastore:
    """The part of st2's ``action_service`` the pack uses (``get_value``/``set_value``)."""

    def __init__(self, pack: str) -> None:
        self.pack = pack
        self.values: dict[str, str] = {}

    def _key(self, name: str, local: bool) -> str:
        return f"{self.pack}:{name}" if local else name

    def get_value(self, name: str, local: bool = True, **_: Any) -> str | None:
        return self.values.get(self._key(name, local))

    def set_value(self, name: str, value: str, ttl: int | None = None, local: bool = True, **_: Any) -> bool:
        self.values[self._key(name, local)] = value
        return True


class PackRunner:
    """Run a pack's actions here: python actions imported and called, workflows interpreted.

    ``run(ref, parameters) -> (status, result)`` with st2's result shapes: python-script
    ``{"exit_code", "result", "stdout", "stderr"}``, orquesta ``{"output"}`` or
    ``{"errors", "output": None}``. Raises :class:`ParameterError` for parameters st2
    would reject and ``KeyError`` for an unknown action."""

    _import_lock = threading.Lock()

    def __init__(self, root: str | Path | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        self.pack = load_pack(root)
        self.config = dict(config or {})
        self.datastore = MemoryDatastore(self.pack.name)
        self._modules: dict[str, ModuleType] = {}

    def action(self, ref: str) -> dict[str, Any]:
        return self.pack.actions[ref]

    def run(self, ref: str, parameters: Mapping[str, Any]) -> tuple[str, Any]:
        metadata = self.pack.actions[ref]
        values = resolve_parameters(metadata, parameters)
        runner = metadata.get("runner_type")
        if runner == "python-script":
            return self._python(ref, metadata, values)
        if runner == "orquesta":
            return orquesta.run_workflow(self.pack.workflows[ref], values, self._task)
        return "failed", {"error": f"runner {runner!r} cannot run outside StackStorm"}

    def _task(self, ref: str, parameters: dict[str, Any]) -> tuple[str, Any]:
        if ref not in self.pack.actions:
            return "failed", {"error": f'Action "{ref}" cannot be found.'}
        try:
            return self.run(ref, parameters)
        except ParameterError as exc:
            return "failed", {"error": f"{ref}: {exc}"}

    def module(self, ref: str) -> ModuleType:
        module = self._modules.get(ref)
        if module is None:
            file = self.pack.root / "actions" / self.pack.actions[ref]["entry_point"]
            name = f"_synthralos_action_{self.pack.name}_{file.stem}"
            spec = importlib.util.spec_from_file_location(name, file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            with self._import_lock:
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                finally:
                    sys.modules.pop(name, None)
            self._modules[ref] = module
        return module

    def action_class(self, ref: str) -> type:
        module = self.module(ref)
        base = module.__dict__.get("Action")
        for value in module.__dict__.values():
            if (isinstance(value, type) and value is not base and base is not None and issubclass(value, base)
                    and value.__module__ == module.__name__ and callable(getattr(value, "run", None))):
                return value
        raise TypeError(f"{ref}: no Action subclass with run() in {module.__file__}")

    def _python(self, ref: str, metadata: Mapping[str, Any], values: dict[str, Any]) -> tuple[str, Any]:
        try:
            instance = self.action_class(ref)(config=self.config, action_service=self.datastore)
            returned = instance.run(**values)
        except Exception as exc:
            return "failed", {"exit_code": 1, "result": None, "stdout": "",
                              "stderr": "".join(traceback.format_exception_only(type(exc), exc)).strip()}
        status = "succeeded"
        if isinstance(returned, tuple) and len(returned) == 2 and isinstance(returned[0], bool):
            status = "succeeded" if returned[0] else "failed"
            returned = returned[1]
        return status, {"exit_code": 0 if status == "succeeded" else 1, "result": returned, "stdout": "",
                        "stderr": ""}
