"""Structured output: an ``output_schema`` (a JSON Schema, or a ``module:Model``
pydantic reference) sent to the provider as ``response_format`` and checked on return.
An answer that does not match is sent back with the validation error as feedback, up to
``retries`` times (see :func:`synthhost.agent_loop.run_tool_loop`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

__all__ = ["OutputSchema"]

_NAME = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class OutputSchema:
    schema: Mapping[str, Any]
    name: str = "output"
    model: type[pydantic.BaseModel] | None = None
    retries: int = 2

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | str, *, retries: int = 2, base_dir: str | None = None) -> OutputSchema:
        """From an agent file's ``output_schema``. Raises ``ValueError`` with a one-line
        reason (not a schema, not importable, not a pydantic model)."""
        if isinstance(spec, str):
            from synthhost.tools.python import import_ref

            model = import_ref(spec, base_dir)
            if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
                raise ValueError(f"{spec!r} is not a pydantic model class")
            return cls(model.model_json_schema(), _NAME.sub("_", model.__name__)[:64], model, retries)
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(dict(spec))
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.path)
            raise ValueError(f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}") from None
        title = str(spec.get("title") or "output")
        return cls(dict(spec), _NAME.sub("_", title)[:64] or "output", None, retries)

    def response_format(self) -> dict[str, Any]:
        """OpenAI's ``response_format`` for this schema."""
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": dict(self.schema)}}

    def problem(self, text: str) -> str | None:
        """Why ``text`` is not a valid answer (one line), or ``None`` when it is."""
        if self.model is not None:
            try:
                self.model.model_validate_json(text)
            except pydantic.ValidationError as exc:
                errs = exc.errors(include_url=False)[:3]
                return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in errs)
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"not valid JSON: {exc}"
        from jsonschema import Draft202012Validator

        error = next(iter(Draft202012Validator(dict(self.schema)).iter_errors(value)), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "$"
        return f"{where}: {error.message}"

    def feedback(self, problem: str) -> str:
        return (f"Your answer does not match the required JSON Schema ({problem}). "
                "Answer again with only a JSON value that matches the schema.")
