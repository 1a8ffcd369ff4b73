"""The input and output models of the built-in brick kinds."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..requests import Message, WireModel

__all__ = [
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
    documents: list[Document] = Field(default_factory=list)


class TextChunk(WireModel):
    """A piece of generated text; a pipeline turns it into a ``text`` event."""

    text: str
    model: str | None = None


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
