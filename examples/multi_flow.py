"""Several flows on one server: a pipeline, a plain flow, and one with its own request model."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field

from llmbrick import ChatRequest, Event, Pipeline, data_event, meta_event, text_event
from llmbrick.bricks import EchoLLM
from llmbrick_sse import SSEServer

server = SSEServer(Pipeline(description="Echo chat.").add_brick(EchoLLM()))


@server.flow("shout", description="Answers in capitals, word by word.")
async def shout(request: ChatRequest) -> AsyncIterator[Event]:
    yield meta_event({"words": len(request.messages[-1].content.split())})
    for word in request.messages[-1].content.split():
        yield text_event(word.upper() + " ")


class SumRequest(BaseModel):
    """Numbers to add up."""

    model_config = ConfigDict(extra="forbid")
    numbers: list[int] = Field(min_length=1)


@server.flow("sum", request_model=SumRequest)
async def add(request: SumRequest) -> AsyncIterator[Event]:
    """Adds numbers and reports the running total."""
    total = 0
    for number in request.numbers:
        total += number
        yield data_event({"total": total}, type="progress")


if __name__ == "__main__":
    server.run()
