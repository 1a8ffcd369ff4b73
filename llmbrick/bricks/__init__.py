"""Bricks: typed, reusable steps, and the ``Pipeline`` that chains them."""

from __future__ import annotations

from .base import Brick, BrickMode, model_accepts
from .builtin import EchoLLM, KeywordGuard
from .kinds import (
    CommonBrick,
    ComposeBrick,
    GuardBrick,
    IntentionBrick,
    LLMBrick,
    RectifyBrick,
    RetrievalBrick,
    TranslateBrick,
    extract_text,
)
from .models import (
    BrickEvent,
    CommonRequest,
    CommonResponse,
    ComposeRequest,
    ComposeResponse,
    Document,
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
from .openai import OpenAILLM
from .pipeline import Pipeline

__all__ = [
    "Brick",
    "BrickEvent",
    "BrickMode",
    "CommonBrick",
    "CommonRequest",
    "CommonResponse",
    "ComposeBrick",
    "ComposeRequest",
    "ComposeResponse",
    "Document",
    "EchoLLM",
    "GuardBrick",
    "GuardRequest",
    "GuardVerdict",
    "IntentResult",
    "IntentionBrick",
    "KeywordGuard",
    "LLMBrick",
    "LLMRequest",
    "OpenAILLM",
    "Pipeline",
    "RectifyBrick",
    "RetrievalBrick",
    "RetrievalRequest",
    "RetrievalResponse",
    "TextChunk",
    "TextInput",
    "TranslateBrick",
    "TranslateRequest",
    "extract_text",
    "model_accepts",
]
