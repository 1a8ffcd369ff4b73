"""Typed brick kinds and how each one takes part in a pipeline.

A *transform* (LLM, compose, common) replaces what the pipeline carries with
its output. A *gate* (guard, intention) inspects the text and passes the value
on unchanged. A *rewriter* (rectify, translate) changes the text in place. An
*enricher* (retrieval) adds documents to the LLM request.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..errors import PermissionDenied
from ..events import Event, meta_event
from ..requests import Message
from .base import Brick
from .models import (
    CommonRequest,
    CommonResponse,
    ComposeRequest,
    ComposeResponse,
    GuardRequest,
    GuardVerdict,
    IntentResult,
    LLMRequest,
    RetrievalRequest,
    RetrievalResponse,
    TextChunk,
    TextInput,
    TranslateRequest,
)

__all__ = [
    "CommonBrick",
    "ComposeBrick",
    "GuardBrick",
    "IntentionBrick",
    "LLMBrick",
    "RectifyBrick",
    "RetrievalBrick",
    "TranslateBrick",
    "extract_text",
]


def extract_text(value: Any) -> str:
    """The text a gate or rewriter works on: ``value.text``, else the last user message."""
    text = getattr(value, "text", None)
    if isinstance(text, str):
        return text
    messages = getattr(value, "messages", None)
    if messages:
        for message in reversed(messages):
            if message.role == "user":
                return str(message.content)
    return ""


def _has_text(source: type[BaseModel]) -> bool:
    fields = source.model_fields
    return "text" in fields or "messages" in fields


def _replace_text(value: BaseModel, text: str) -> BaseModel:
    if "text" in type(value).model_fields:
        return value.model_copy(update={"text": text})
    messages: list[Message] = list(getattr(value, "messages", []))
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            messages[index] = messages[index].model_copy(update={"content": text})
            break
    return value.model_copy(update={"messages": messages})


class LLMBrick(Brick[LLMRequest, TextChunk]):
    """Generates text from chat messages; usually streaming."""

    kind = "llm"
    input_model = LLMRequest
    output_model = TextChunk


class _TextStep(Brick[Any, Any]):
    """A brick that reads the text of whatever the pipeline carries."""

    def accepts(self, source: type[BaseModel]) -> bool:
        return _has_text(source)

    def output_for(self, source: type[BaseModel]) -> type[BaseModel]:
        return source

    def to_input(self, value: Any) -> Any:
        if isinstance(value, BaseModel) and not isinstance(value, self.input_model):
            return self.input_model.model_validate(self._input_fields(extract_text(value)))
        return super().to_input(value)

    def _input_fields(self, text: str) -> dict[str, Any]:
        return {"text": text}


class GuardBrick(_TextStep):
    """Judges text; a rejection ends the stream with ``PERMISSION_DENIED``."""

    kind = "guard"
    input_model = GuardRequest
    output_model = GuardVerdict

    def merge(self, value: BaseModel, output: Any) -> BaseModel:
        if not output.allowed:
            reason = output.reason or "the request was rejected"
            details: dict[str, Any] = {"guard": self.name}
            if output.score is not None:
                details["score"] = output.score
            raise PermissionDenied(f"{self.name}: {reason}", details=details)
        return value


class IntentionBrick(_TextStep):
    """Detects the intent of the text and reports it as a ``meta`` event."""

    kind = "intention"
    input_model = TextInput
    output_model = IntentResult

    def merge(self, value: BaseModel, output: Any) -> BaseModel:
        return value

    def events_for(self, output: Any) -> list[Event]:
        return [meta_event({"intent": output.intent, "confidence": output.confidence})]


class RectifyBrick(_TextStep):
    """Rewrites text (spelling, normalisation) before later bricks see it."""

    kind = "rectify"
    input_model = TextInput
    output_model = TextInput

    def merge(self, value: BaseModel, output: Any) -> BaseModel:
        return _replace_text(value, output.text)


class TranslateBrick(_TextStep):
    """Translates text into ``target_language``, in place."""

    kind = "translate"
    input_model = TranslateRequest
    output_model = TextInput

    def __init__(self, *, target_language: str = "en", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_language = target_language

    def _input_fields(self, text: str) -> dict[str, Any]:
        return {"text": text, "target_language": self.target_language}

    def merge(self, value: BaseModel, output: Any) -> BaseModel:
        return _replace_text(value, output.text)


class RetrievalBrick(Brick[RetrievalRequest, RetrievalResponse]):
    """Finds documents for the user's question and adds them to the LLM request."""

    kind = "retrieval"
    input_model = RetrievalRequest
    output_model = RetrievalResponse

    def __init__(self, *, max_results: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_results = max_results

    def accepts(self, source: type[BaseModel]) -> bool:
        return issubclass(source, RetrievalRequest) or "messages" in source.model_fields

    def output_for(self, source: type[BaseModel]) -> type[BaseModel]:
        if issubclass(source, RetrievalRequest):
            return self.output_model
        return source if "documents" in source.model_fields else LLMRequest

    def to_input(self, value: Any) -> RetrievalRequest:
        if isinstance(value, BaseModel) and "messages" in type(value).model_fields:
            return RetrievalRequest(query=extract_text(value), max_results=self.max_results)
        return super().to_input(value)

    def merge(self, value: BaseModel, output: RetrievalResponse) -> BaseModel:
        if "messages" not in type(value).model_fields:
            return output
        if "documents" not in type(value).model_fields:
            value = LLMRequest.model_validate(value, from_attributes=True)
        documents = [*getattr(value, "documents", []), *output.documents]
        return value.model_copy(update={"documents": documents})


class ComposeBrick(Brick[ComposeRequest, ComposeResponse]):
    """Composes documents into one structured output."""

    kind = "compose"
    input_model = ComposeRequest
    output_model = ComposeResponse


class CommonBrick(Brick[CommonRequest, CommonResponse]):
    """A free-form brick: a dict in, a dict out."""

    kind = "common"
    input_model = CommonRequest
    output_model = CommonResponse
