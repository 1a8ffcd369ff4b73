"""A guarded chat pipeline and a flow of its own, served over gRPC (with the LLM brick too).

Run it with ``python examples/grpc_server.py [PORT]`` (default 50051), then call it with
the Python client (``python examples/grpc_client.py``) or, through server
reflection, with grpcurl::

    grpcurl -plaintext -d '{"messages": [{"role": "user", "content": "hello there"}]}' \
        127.0.0.1:50051 llmbrick.v1.FlowService/Stream
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel

from llmbrick import Event, Pipeline
from llmbrick.bricks import EchoLLM, KeywordGuard
from llmbrick_grpc import GrpcServer

llm = EchoLLM(delay=0.05)
pipeline = (
    Pipeline(description="Echoes your message back, unless it mentions a blocked word.")
    .add_brick(KeywordGuard(["password", "bomb"]))
    .add_brick(llm)
)
# The pipeline is the flow "default"; the LLM brick is also served on BrickService,
# so another process can use it as a RemoteBrick (see examples/grpc_remote_brick.py).
server = GrpcServer(pipeline, bricks=[llm])


class Countdown(BaseModel):
    """The request of the ``countdown`` flow: its fields travel in ``extra_json``."""

    start: int = 3


@server.flow("countdown", request_model=Countdown, description="Counts down to zero.")
async def countdown(request: Countdown) -> AsyncIterator[Event]:
    for n in range(request.start, -1, -1):
        yield {"type": "tick", "data": {"n": n, "last": n == 0}}


if __name__ == "__main__":
    import sys

    server.run("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 50051)
