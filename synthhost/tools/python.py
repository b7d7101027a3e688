"""Python functions as tools: the argument schema comes from the type hints (pydantic),
arguments are validated (and coerced) by pydantic before the call, sync functions run in
a worker thread so they never block the event loop."""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

import anyio
import pydantic

from synthhost.tools import DEFAULT_TIMEOUT_S, Tool, ToolError

__all__ = ["import_ref", "python_tool"]


def import_ref(ref: str, search_dir: str | None = None) -> Any:
    """``package.module:attribute`` → the attribute. ``search_dir`` (the agent file's
    directory) is searched first, so a tool module can sit beside its agent file. Raises
    ``ValueError`` with a one-line reason."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'package.module:name', got {ref!r}")
    added = search_dir is not None and search_dir not in sys.path
    if added:
        sys.path.insert(0, str(search_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:  # the module itself failed while importing
        raise ValueError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(str(search_dir))
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    return target


def _description(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def _errors(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def python_tool(fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                timeout_s: float | None = None, source: str = "python") -> Tool:
    """A :class:`Tool` for a typed function (``def`` or ``async def``). Its parameters
    must be JSON-representable types; the first docstring paragraph is the description."""
    if not callable(fn):
        raise ValueError(f"{fn!r} is not callable")
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(fn)  # type: ignore[arg-type]  # a callable's call schema
        parameters = adapter.json_schema()
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError) as exc:
        raise ValueError(f"cannot derive an argument schema for {getattr(fn, '__name__', fn)!r}: "
                         f"{' '.join(str(exc).split())[:200]}") from None
    is_async = inspect.iscoroutinefunction(fn)
    # Validation happens in the calling task (bad arguments never take a thread); the
    # sync body then runs in a worker thread.
    argument_model = _arguments_model(fn)

    def validate(args: dict[str, Any]) -> dict[str, Any]:
        if argument_model is None:
            return args
        try:
            model = argument_model.model_validate(args)
        except pydantic.ValidationError as exc:
            raise ToolError(f"invalid arguments: {_errors(exc)}", code="TOOL_BAD_ARGUMENTS") from None
        return {k: getattr(model, k) for k in type(model).model_fields}

    if is_async:
        async def invoke(args: dict[str, Any]) -> Any:
            return await fn(**args)
    else:
        async def invoke(args: dict[str, Any]) -> Any:
            return await anyio.to_thread.run_sync(functools.partial(fn, **args))

    return Tool(
        name=name or fn.__name__,
        description=description if description is not None else _description(fn),
        parameters=parameters,
        invoke=invoke,
        timeout_s=timeout_s or DEFAULT_TIMEOUT_S,
        source=source,
        validate=validate,
    )


def _arguments_model(fn: Callable[..., Any]) -> type[pydantic.BaseModel] | None:
    """A pydantic model of the function's keyword parameters (None: it takes none)."""
    fields: dict[str, Any] = {}
    hints = _hints(fn)
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    if not fields:
        return None
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return pydantic.create_model(f"{fn.__name__}_arguments", __config__=config, **fields)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        import typing

        return typing.get_type_hints(fn)
    except Exception:  # unresolved forward references: validate as Any
        return {}
