"""Request models: ``ChatRequest``, the default, accepts the upstream llmbrick and OpenAI shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = ["ChatRequest", "Message", "WireModel"]


class WireModel(BaseModel):
    """Base for models that cross the wire: camelCase out, camelCase or snake_case in.

    Unknown fields are rejected, so a typo in a client is a clear 422 rather than
    a silently ignored setting.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
    )


class Message(WireModel):
    """One chat message.

    An assistant message may carry ``tool_calls`` (OpenAI-shaped dicts: ``id``,
    ``type``, ``function`` with ``name`` and ``arguments``) and then needs no
    ``content``; a ``tool`` message answers one of them through ``tool_call_id``.

    ``parts`` keeps a message's content as an OpenAI client sent it (a list of
    ``{"type": "text" | "image_url" | "input_audio" | "file", ...}`` parts) when it
    holds more than text; ``content`` then has the text parts joined. Only flows that
    declare the matching capability (``"images"``, ``"audio"``, ``"files"``) get such
    messages: the OpenAI route refuses them for other flows, so a flow that reads
    only ``content`` never misses a picture silently. OpenAI's ``developer`` role
    arrives as ``system``, which every model server understands.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    parts: list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> Message:
        # Only a tool-calling assistant turn has nothing to say; any other message
        # without content is a client mistake better reported than sent upstream.
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if self.content is None and not self.tool_calls:
            raise ValueError("content is required, except in an assistant message with tool_calls")
        return self


class ChatRequest(WireModel):
    """The default request of every flow.

    ``options`` holds the API options a flow may honour and llmbrick has no field
    for, under their OpenAI names (``presence_penalty``, ``logit_bias``,
    ``reasoning_effort``, ``parallel_tool_calls``, ``service_tier``, ...): the
    OpenAI route puts every such field of a Chat Completions request there, and
    other clients may send it too. Nothing in llmbrick acts on it; a flow reads
    what it supports and ignores the rest, as a model server would.
    """

    flow: str = "default"
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = True
    session_id: str | None = None
    client_id: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    source_language: str | None = None
    metadata: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
