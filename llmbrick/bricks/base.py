"""``Brick``: a typed, reusable step with a pydantic input and output model."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast, overload

from pydantic import BaseModel, ValidationError

from ..errors import InvalidRequest, LLMBrickError
from ..events import Event
from .models import BrickEvent, CommonRequest, CommonResponse

__all__ = ["Brick", "BrickMode", "model_accepts"]

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)
BrickMode = Literal["unary", "stream"]

UnaryHandler = Callable[[Any], Awaitable[Any]]
StreamHandler = Callable[[Any], AsyncIterator[Any]]


def model_accepts(target: type[BaseModel], source: type[BaseModel]) -> bool:
    """Whether a ``source`` instance can always be converted into ``target``.

    True for subclasses, and structurally when every required field of
    ``target`` exists in ``source`` with the same annotation (nested models are
    compared the same way) and, when ``target`` has fields, at least one of them
    is carried over: a conversion that would fill every field with its default
    throws the value away (a text chunk turned into an empty free-form request).
    """
    if issubclass(source, target):
        return True
    source_fields = source.model_fields
    target_fields = target.model_fields
    if target_fields and not target_fields.keys() & source_fields.keys():
        return False
    for name, field in target_fields.items():
        other = source_fields.get(name)
        if other is None:
            if field.is_required():
                return False
            continue
        want, have = field.annotation, other.annotation
        if want == have or want is Any:
            continue
        if (
            isinstance(want, type)
            and isinstance(have, type)
            and issubclass(want, BaseModel)
            and issubclass(have, BaseModel)
            and model_accepts(want, have)
        ):
            continue
        return False
    return True


class Brick(Generic[In, Out]):
    """A reusable step: unary (one input, one output) or streaming (one input, many outputs).

    Implement it by subclassing and overriding :meth:`handle` (unary) or
    :meth:`handle_stream` (streaming), or by decorating a function on an
    instance with :meth:`unary` or :meth:`stream`. Call it directly with
    ``await brick.run(x)`` or ``async for y in brick.stream(x)``, or add it to
    a :class:`~llmbrick.Pipeline`.
    """

    input_model: type[BaseModel] = CommonRequest
    output_model: type[BaseModel] = CommonResponse
    kind: ClassVar[str] = "common"
    version: str = "1.0.0"

    def __init__(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        version: str | None = None,
        input_model: type[In] | None = None,
        output_model: type[Out] | None = None,
    ) -> None:
        self.name = name or type(self).__name__
        doc = inspect.getdoc(type(self)) or ""
        self.description = description if description is not None else doc.split("\n\n")[0]
        if version is not None:
            self.version = version
        if input_model is not None:
            self.input_model = input_model
        if output_model is not None:
            self.output_model = output_model
        self._unary: UnaryHandler | None = None
        self._stream: StreamHandler | None = None
        if type(self).handle is not Brick.handle:
            self._unary = self.handle
        if type(self).handle_stream is not Brick.handle_stream:
            self._stream = self.handle_stream

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.kind}>"

    # -- what subclasses override ---------------------------------------------------------

    async def handle(self, request: In) -> Out:
        """Process one input into one output (override for a unary brick)."""
        raise NotImplementedError

    def handle_stream(self, request: In) -> AsyncIterator[Out]:
        """Produce many outputs from one input (override with an async generator)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release resources (clients, connections); called when the server shuts down."""

    # -- decorators -----------------------------------------------------------------------

    def unary(self, fn: Callable[[In], Awaitable[Out]]) -> Callable[[In], Awaitable[Out]]:
        """Use ``fn`` (an ``async def``) as this brick's unary handler."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@{self.name}.unary needs an 'async def' function, got {fn!r}")
        self._unary = fn
        return fn

    @overload
    def stream(
        self, arg: Callable[[In], AsyncIterator[Out]]
    ) -> Callable[[In], AsyncIterator[Out]]: ...

    @overload
    def stream(self, arg: In | dict[str, Any]) -> AsyncIterator[Out]: ...

    def stream(self, arg: Any) -> Any:
        """Run the brick on ``arg`` and iterate its outputs, or, given an async
        generator function, register it as the streaming handler (decorator)."""
        if inspect.isasyncgenfunction(arg):
            self._stream = arg
            return arg
        if callable(arg) and not isinstance(arg, BaseModel):
            raise TypeError(
                f"@{self.name}.stream needs an async generator function "
                f"('async def' with 'yield'), got {arg!r}"
            )
        return self._iterate(self.to_input(arg))

    # -- calling --------------------------------------------------------------------------

    @property
    def mode(self) -> BrickMode:
        """``"stream"`` if a streaming handler is set, otherwise ``"unary"``."""
        return "stream" if self._stream is not None else "unary"

    @property
    def has_handler(self) -> bool:
        """Whether a handler was given by overriding or decorating."""
        return self._stream is not None or self._unary is not None

    async def run(self, request: In | dict[str, Any]) -> Out:
        """Run a unary brick on one input and return its output."""
        if self._stream is not None:
            raise TypeError(f"brick {self.name!r} streams: use 'async for y in brick.stream(x)'")
        return await self._call(self.to_input(request))

    async def _call(self, request: In) -> Out:
        if self._unary is None:
            raise self._no_handler()
        return self.check_output(await self._unary(request))

    async def _iterate(self, request: In) -> AsyncGenerator[Out]:
        if self._stream is None:
            yield await self._call(request)
            return
        source = self._stream(request)
        try:
            async for item in source:
                yield self.check_output(item)
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    def _no_handler(self) -> TypeError:
        return TypeError(
            f"brick {self.name!r} has no handler: override handle()/handle_stream() "
            f"or decorate an async function with @brick.unary / @brick.stream"
        )

    # -- typing and conversion ------------------------------------------------------------

    def to_input(self, value: Any) -> In:
        """Convert ``value`` (a model or a dict) into this brick's input model."""
        model = self.input_model
        if isinstance(value, model):
            return cast(In, value)
        try:
            if isinstance(value, BaseModel):
                return cast(In, model.model_validate(value, from_attributes=True))
            return cast(In, model.model_validate(value))
        except ValidationError as exc:
            raise InvalidRequest.from_validation_error(
                exc, what=f"input for brick {self.name!r}"
            ) from None

    def check_output(self, value: Any) -> Out:
        """Return ``value`` as this brick's output model, or fail naming the brick.

        A :class:`~llmbrick.bricks.BrickEvent` passes as it is: a streaming brick
        may yield one to send an event (a tool call, usage) besides its outputs.
        """
        model = self.output_model
        if isinstance(value, model | BrickEvent):
            return cast(Out, value)
        try:
            return cast(Out, model.model_validate(value))
        except ValidationError:
            raise LLMBrickError(
                f"brick {self.name!r} produced {type(value).__name__}, expected {model.__name__}"
            ) from None

    def accepts(self, source: type[BaseModel]) -> bool:
        """Whether this brick can follow a step that produces ``source``."""
        return model_accepts(self.input_model, source)

    def output_for(self, source: type[BaseModel]) -> type[BaseModel]:
        """What the pipeline carries after this brick, given what came in."""
        return self.output_model

    def merge(self, value: BaseModel, output: Out) -> BaseModel:
        """What the pipeline carries on, given the incoming value and this brick's output."""
        return output

    def events_for(self, output: Out) -> list[Event]:
        """Extra events this brick emits for an output (none by default)."""
        return []

    def info(self) -> dict[str, Any]:
        """Name, kind, version, mode and the JSON schemas of the models."""
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "description": self.description,
            "mode": self.mode,
            "inputModel": self.input_model.__name__,
            "outputModel": self.output_model.__name__,
            "inputSchema": self.input_model.model_json_schema(),
            "outputSchema": self.output_model.model_json_schema(),
        }
