"""``Pipeline``: bricks chained into a flow, type-checked when assembled."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, cast

from pydantic import BaseModel

from ..context import current_context
from ..errors import PipelineTypeError
from ..events import Event
from ..requests import ChatRequest
from .base import Brick
from .models import BrickEvent, TextChunk

__all__ = ["Pipeline"]


class Pipeline:
    """An ordered chain of bricks that is itself a flow.

    ``add_brick`` checks that each brick accepts what the previous step
    produces and fails at assembly time, naming both sides. Once a brick
    streams, each later brick runs once per streamed item. What comes out of
    the last brick becomes events: a :class:`TextChunk` becomes a ``text``
    event, any other model a ``data`` event carrying its fields. A
    :class:`BrickEvent` that a streaming brick yields becomes its event at once
    and skips the later bricks.

    Args:
        request_model: what the pipeline receives; the default is ``ChatRequest``.
        description: shown in flow listings.
    """

    def __init__(
        self,
        *,
        request_model: type[BaseModel] = ChatRequest,
        description: str = "",
    ) -> None:
        self.request_model = request_model
        self.description = description
        self._bricks: list[Brick[Any, Any]] = []
        self._carried: type[BaseModel] = request_model

    def __repr__(self) -> str:
        names = " -> ".join(brick.name for brick in self._bricks) or "(empty)"
        return f"<Pipeline {names}>"

    @property
    def bricks(self) -> tuple[Brick[Any, Any], ...]:
        """The bricks, in order."""
        return tuple(self._bricks)

    @property
    def output_model(self) -> type[BaseModel]:
        """What the last brick hands out."""
        return self._carried

    def add_brick(self, brick: Brick[Any, Any]) -> Pipeline:
        """Append ``brick`` after checking it accepts the previous step's output.

        Raises:
            PipelineTypeError: the types do not fit, or ``brick`` is not a Brick.
        """
        if not isinstance(brick, Brick):
            raise PipelineTypeError(f"add_brick() needs a Brick, got {type(brick).__name__}")
        if not brick.has_handler:
            raise PipelineTypeError(str(brick._no_handler()))
        source = self._carried
        if not brick.accepts(source):
            previous = (
                f"brick {self._bricks[-1].name!r}" if self._bricks else "the pipeline's request"
            )
            wanted = brick.input_model.model_fields
            carried = source.model_fields
            why = ""
            if wanted and not wanted.keys() & carried.keys():
                why = (
                    f": none of {source.__name__}'s fields ({', '.join(carried) or 'none'}) is "
                    f"one of {brick.input_model.__name__}'s ({', '.join(wanted)}), so the value "
                    "would be lost; give the brick an input model with those fields, or put a "
                    "brick that converts in between"
                )
            raise PipelineTypeError(
                f"brick {brick.name!r} ({brick.kind}) expects {brick.input_model.__name__}, "
                f"but {previous} produces {source.__name__}{why}"
            )
        self._bricks.append(brick)
        self._carried = brick.output_for(source)
        return self

    def __call__(self, request: BaseModel) -> AsyncIterator[Event]:
        """Run the pipeline on one request: this is what makes it a flow."""
        return self._events(request)

    async def _events(self, request: BaseModel) -> AsyncGenerator[Event]:
        hooks = _BrickHooks.current()
        async with aclosing(self._drive(request, 0, hooks)) as items:
            async for item in items:
                yield cast(Event, item) if isinstance(item, dict) else _to_event(item)

    async def _drive(
        self, value: Any, index: int, hooks: _BrickHooks | None
    ) -> AsyncGenerator[Any]:
        bricks = self._bricks
        last = len(bricks) - 1
        while index <= last and bricks[index].mode == "unary":
            brick = bricks[index]
            if hooks is None:
                output = await brick._call(brick.to_input(value))
            else:
                output = await hooks.call(brick, value)
            for event in brick.events_for(output):
                yield event
            value = brick.merge(value, output)
            index += 1
        if index > last:
            yield value
            return
        brick = bricks[index]
        token = hooks.started(brick) if hooks is not None else None
        error: BaseException | None = None
        try:
            async with aclosing(brick._iterate(brick.to_input(value))) as outputs:
                async for output in outputs:
                    if isinstance(output, BrickEvent):
                        # Not content: straight to the client, past the later bricks.
                        yield output.to_event()
                        continue
                    for event in brick.events_for(output):
                        yield event
                    merged = brick.merge(value, output)
                    if index == last:
                        yield merged
                    else:
                        async with aclosing(self._drive(merged, index + 1, hooks)) as rest:
                            async for item in rest:
                                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            if hooks is not None:
                hooks.ended(brick, token, error)

    async def aclose(self) -> None:
        """Close every brick (see :meth:`Brick.aclose`)."""
        for brick in self._bricks:
            await brick.aclose()

    def info(self) -> dict[str, Any]:
        """The bricks' ``info()`` in order, for listings."""
        return {"bricks": [brick.info() for brick in self._bricks]}


class _BrickHooks:
    """Tells the runtime's brick observers when each brick of the current stream runs."""

    __slots__ = ("_observers", "_started", "_stream")

    def __init__(self, stream: Any, observers: Any) -> None:
        self._stream = stream
        self._observers = observers
        self._started: dict[int, float] = {}

    @classmethod
    def current(cls) -> _BrickHooks | None:
        """Hooks for the stream running in this task, or ``None`` if nothing observes bricks."""
        context = current_context()
        stream = context._stream if context is not None else None
        if stream is None:
            return None
        observers = stream._runtime._observers
        return cls(stream, observers) if observers.per_brick else None

    def started(self, brick: Brick[Any, Any]) -> tuple[list[Any], float]:
        tokens = self._observers.call(
            self._observers.per_brick, "brick_started", self._stream, brick
        )
        return tokens, time.monotonic()

    def ended(self, brick: Brick[Any, Any], token: Any, error: BaseException | None) -> None:
        tokens, began = token
        seconds = time.monotonic() - began
        for observer, value in zip(self._observers.per_brick, tokens, strict=True):
            self._observers.call(
                (observer,), "brick_ended", self._stream, brick, value, seconds, error
            )

    async def call(self, brick: Brick[Any, Any], value: Any) -> Any:
        token = self.started(brick)
        try:
            output = await brick._call(brick.to_input(value))
        except BaseException as exc:
            self.ended(brick, token, exc)
            raise
        self.ended(brick, token, None)
        return output


def _to_event(value: BaseModel) -> Event:
    if isinstance(value, BrickEvent):
        return value.to_event()
    if isinstance(value, TextChunk):
        event: Event = {"type": "text", "text": value.text}
        if value.model is not None:
            event["model"] = value.model
        return event
    return {"type": "data", "data": value.model_dump(mode="json", exclude_none=True)}
