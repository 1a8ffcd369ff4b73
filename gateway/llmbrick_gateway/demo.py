"""The built-in demo pipeline: served when ``llmbrick serve`` is given no target."""

from __future__ import annotations

from llmbrick import Pipeline
from llmbrick.bricks import EchoLLM, KeywordGuard

__all__ = ["demo_pipeline"]


def demo_pipeline() -> Pipeline:
    """A guard rejecting a few words, then an echo LLM at a readable pace; needs no API key."""
    return (
        Pipeline(description="Demo: echoes your last message word by word; rejects 'bomb'.")
        .add_brick(KeywordGuard(["bomb", "password"]))
        .add_brick(EchoLLM(delay=0.05, prefix="You said: "))
    )
