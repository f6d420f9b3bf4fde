"""Tools: typed Python functions a model may call, described to it by their own signature.

The JSON schema a model sees is derived from the function's parameters and
type hints (through pydantic), and the arguments the model writes are
validated against the same model before the function runs. A model that
writes bad arguments gets the validation error back as the tool's answer, so
it can correct itself; the run does not crash on a model's typo.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any, overload

import pydantic

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import CallTimeoutError, ConfigurationError
from bastion.models._types import ToolCall, ToolSpec
from bastion.resilience._invoke import is_async_callable
from bastion.resilience._threads import start_in_thread
from bastion.resilience._timeout import call_with_timeout

__all__ = ["Tool", "ToolError", "tool"]


class ToolError(Exception):
    """Raise inside a tool to send the model a message instead of a result (``str(exc)``)."""


class Tool:
    """A function the model can call: its name, description, argument schema and a runner."""

    __slots__ = ("_arguments", "description", "fn", "is_async", "name", "parameters", "timeout")

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        target: object = fn
        if not callable(target):
            msg = f"a tool must be a function, got {target!r}"
            raise ConfigurationError(msg)
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        if not self.name.replace("_", "").replace("-", "").isalnum():
            msg = f"tool name {self.name!r} must use only letters, digits, '_' and '-'"
            raise ConfigurationError(msg)
        doc = inspect.getdoc(fn) or ""
        self.description = description if description is not None else doc.split("\n\n")[0]
        self.is_async = is_async_callable(fn)
        self.timeout = timeout
        self._arguments = _arguments_model(fn, self.name)
        schema = self._arguments.model_json_schema()
        schema.pop("title", None)
        self.parameters: dict[str, Any] = schema

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    @property
    def spec(self) -> ToolSpec:
        """How the model sees this tool."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    async def invoke(self, call: ToolCall, *, clock: Clock = SYSTEM_CLOCK) -> str:
        """Run the tool for one call; every outcome, failures too, becomes text for the model."""
        try:
            raw = call.parsed_arguments()
            arguments = self._arguments.model_validate(raw)
        except (ValueError, pydantic.ValidationError) as exc:
            return f"error: invalid arguments for {self.name}: {_brief(exc)}"
        kwargs = {field: getattr(arguments, field) for field in type(arguments).model_fields}
        try:
            if self.is_async:
                run: Callable[[], Awaitable[Any]] = lambda: self.fn(**kwargs)  # noqa: E731
            else:
                future = start_in_thread(lambda: self.fn(**kwargs), name=f"tool-{self.name}")
                run = lambda: asyncio.wrap_future(future)  # noqa: E731
            result = await call_with_timeout(run, self.timeout, name=self.name, clock=clock)
        except ToolError as exc:
            return f"error: {exc}"
        except CallTimeoutError:
            return f"error: {self.name} did not finish within {self.timeout:g}s"
        except Exception as exc:
            return f"error: {self.name} failed: {type(exc).__name__}: {_brief(exc)}"
        return _as_text(result)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout: float | None = 30.0
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = 30.0,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a :class:`Tool` of a function: ``@tool`` or ``@tool(timeout=5)``."""
    if fn is not None:
        return Tool(fn, name=name, description=description, timeout=timeout)

    def make(target: Callable[..., Any]) -> Tool:
        return Tool(target, name=name, description=description, timeout=timeout)

    return make


def _arguments_model(fn: Callable[..., Any], name: str) -> type[pydantic.BaseModel]:
    signature = inspect.signature(fn)
    hints = _parameter_hints(fn, name)
    fields: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            msg = f"tool {name!r} cannot take *args or **kwargs: the model needs named arguments"
            raise ConfigurationError(msg)
        annotation = hints.get(parameter.name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    model: type[pydantic.BaseModel] = pydantic.create_model(
        f"{name}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )
    return model


def _parameter_hints(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    """The parameters' type hints, resolved; the return annotation is never needed or read."""
    raw = dict(getattr(fn, "__annotations__", {}))
    raw.pop("return", None)
    namespace = getattr(inspect.unwrap(fn), "__globals__", {})
    hints: dict[str, Any] = {}
    for parameter, annotation in raw.items():
        if not isinstance(annotation, str):
            hints[parameter] = annotation
            continue
        try:
            # Resolves the tool author's own annotation, as typing.get_type_hints would.
            hints[parameter] = eval(annotation, namespace)
        except Exception as exc:
            msg = (
                f"cannot resolve the type hint {annotation!r} of {name}({parameter}): {exc}; "
                "define the type at module level"
            )
            raise ConfigurationError(msg) from exc
    return hints


def _as_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, pydantic.BaseModel):
        return result.model_dump_json()
    try:
        return json.dumps(result, default=str)
    except (TypeError, ValueError):
        return str(result)


def _brief(exc: BaseException, limit: int = 500) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."
