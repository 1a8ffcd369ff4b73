"""Bricks that need no API key: for examples, tests and the built-in demo."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable

from .kinds import GuardBrick, LLMBrick, extract_text
from .models import GuardRequest, GuardVerdict, LLMRequest, TextChunk

__all__ = ["EchoLLM", "KeywordGuard"]

_TOKEN = re.compile(r"\S+\s*|\s+")


class EchoLLM(LLMBrick):
    """A deterministic streaming LLM: repeats the last user message word by word.

    Args:
        delay: seconds to wait before each token, to imitate a real model's pace.
        prefix: text streamed before the echo.
        model: the ``model`` name stamped on each chunk.
    """

    def __init__(
        self, *, delay: float = 0.0, prefix: str = "", model: str = "echo", name: str = "echo"
    ) -> None:
        super().__init__(name=name)
        self.delay = delay
        self.prefix = prefix
        self.model = model

    async def handle_stream(self, request: LLMRequest) -> AsyncIterator[TextChunk]:
        text = self.prefix
        if request.documents:
            titles = ", ".join(doc.title or doc.id for doc in request.documents)
            text += f"[{len(request.documents)} document(s): {titles}] "
        text += extract_text(request)
        model = request.model or self.model
        for token in _TOKEN.findall(text) or [""]:
            # Sleeping even for zero keeps a fast echo from starving other streams.
            await asyncio.sleep(self.delay)
            yield TextChunk(text=token, model=model)


class KeywordGuard(GuardBrick):
    """Rejects text containing any of the given words (case-insensitive)."""

    def __init__(self, blocked: Iterable[str], *, name: str = "keyword-guard") -> None:
        super().__init__(name=name)
        self.blocked = tuple(word.lower() for word in blocked)

    async def handle(self, request: GuardRequest) -> GuardVerdict:
        lowered = request.text.lower()
        for word in self.blocked:
            if word in lowered:
                return GuardVerdict(allowed=False, reason=f"blocked word {word!r}", score=1.0)
        return GuardVerdict(allowed=True, score=0.0)
