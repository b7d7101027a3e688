"""Argument validation against a JSON Schema (tools whose schema is not derived from
Python type hints: HTTP templates and MCP servers' tools)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from synthhost.tools import ToolError


def schema_validator(schema: Mapping[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(dict(schema))

    def validate(args: dict[str, Any]) -> dict[str, Any]:
        error = next(iter(validator.iter_errors(args)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "arguments"
            raise ToolError(f"invalid arguments: {where}: {error.message}", "TOOL_BAD_ARGUMENTS")
        return args

    return validate
