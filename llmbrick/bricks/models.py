"""The input and output models of the built-in brick kinds."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from ..events import TERMINAL_TYPES, Event
from ..requests import Message, WireModel

__all__ = [
    "BrickEvent",
    "CommonRequest",
    "CommonResponse",
    "ComposeRequest",
    "ComposeResponse",
    "Document",
    "GuardRequest",
    "GuardVerdict",
    "IntentResult",
    "LLMRequest",
    "RetrievalRequest",
    "RetrievalResponse",
    "TextChunk",
    "TextInput",
    "TranslateRequest",
]


class Document(WireModel):
    """A retrieved document."""

    id: str
    text: str
    title: str | None = None
    score: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class LLMRequest(WireModel):
    """What an LLM brick needs; a ``ChatRequest`` converts to it field by field."""

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    documents: list[Document] = Field(default_factory=list)


class TextChunk(WireModel):
    """A piece of generated text; a pipeline turns it into a ``text`` event."""

    text: str
    model: str | None = None


class BrickEvent(WireModel):
    """An event a streaming brick yields among its outputs, for the client as is.

    It is not content: a pipeline sends it on unchanged (see :meth:`to_event`) and
    later bricks never see it. An LLM brick uses it for tool calls and usage.
    ``type`` is a lowercase event name other than ``done`` and ``error``, which
    only the runtime sends.
    """

    type: str = Field(pattern=r"^[a-z][a-z0-9_.-]*$")
    data: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("type")
    @classmethod
    def _not_terminal(cls, value: str) -> str:
        if value in TERMINAL_TYPES:
            raise ValueError(f"{value!r} ends a stream; only the runtime sends it")
        return value

    def to_event(self) -> Event:
        """The event dict: ``type`` plus ``data`` and ``metadata`` when given."""
        event: Event = {"type": self.type}
        if self.data is not None:
            event["data"] = self.data
        if self.metadata is not None:
            event["metadata"] = self.metadata
        return event


class TextInput(WireModel):
    """Plain text to inspect or rewrite."""

    text: str


class GuardRequest(TextInput):
    """Text for a guard to judge."""


class GuardVerdict(WireModel):
    """A guard's decision; ``allowed=False`` stops the pipeline with PERMISSION_DENIED."""

    allowed: bool
    reason: str = ""
    score: float | None = None


class TranslateRequest(WireModel):
    """Text to translate."""

    text: str
    target_language: str
    source_language: str | None = None


class IntentResult(WireModel):
    """The detected intent of a text."""

    intent: str
    confidence: float = 1.0


class RetrievalRequest(WireModel):
    """A search query."""

    query: str
    max_results: int = Field(default=5, gt=0)


class RetrievalResponse(WireModel):
    """Documents found for a query."""

    documents: list[Document]


class ComposeRequest(WireModel):
    """Documents to compose into one output."""

    documents: list[Document]
    format: str = "text"


class ComposeResponse(WireModel):
    """A composed output."""

    output: dict[str, Any]


class CommonRequest(WireModel):
    """A free-form request."""

    data: dict[str, Any] = Field(default_factory=dict)


class CommonResponse(WireModel):
    """A free-form response."""

    data: dict[str, Any] = Field(default_factory=dict)
