"""A RAG-style pipeline: guard -> retrieval -> LLM -> translate, every brick typed.

Serve it on every transport with ``llmbrick serve examples/rag.py`` and ask::

    llmbrick call http://127.0.0.1:8000 --message "what is llmbrick"

The retrieval brick finds documents by shared words and hands them to the LLM
request; the LLM (an echo, so no API key is needed) mentions them; the
translator rewrites each streamed chunk.
"""

from __future__ import annotations

from llmbrick import Pipeline, RetrievalBrick, TranslateBrick
from llmbrick.bricks import (
    Document,
    EchoLLM,
    KeywordGuard,
    RetrievalRequest,
    RetrievalResponse,
    TextInput,
    TranslateRequest,
)

LIBRARY = [
    Document(id="d1", title="llmbrick", text="llmbrick serves LLM pipelines over SSE and gRPC"),
    Document(id="d2", title="bricks", text="a brick is a typed step with pydantic models"),
    Document(id="d3", title="gateway", text="the gateway serves every transport in one process"),
]


class WordRetrieval(RetrievalBrick):
    """Ranks the library by the words a document shares with the question."""

    async def handle(self, request: RetrievalRequest) -> RetrievalResponse:
        words = set(request.query.lower().split())
        scored = [(len(words & set(doc.text.lower().split())), doc) for doc in LIBRARY]
        hits = [
            doc.model_copy(update={"score": float(score)})
            for score, doc in sorted(scored, key=lambda pair: -pair[0])
            if score
        ]
        return RetrievalResponse(documents=hits[: request.max_results])


class Shouting(TranslateBrick):
    """A stand-in translator into the 'loud' language: capital letters."""

    async def handle(self, request: TranslateRequest) -> TextInput:
        return TextInput(text=request.text.upper())


pipeline = (
    Pipeline(description="Answers from a small library, loudly.")
    .add_brick(KeywordGuard(["password"]))
    .add_brick(WordRetrieval(max_results=2))
    .add_brick(EchoLLM(delay=0.02))
    .add_brick(Shouting(target_language="loud"))
)
