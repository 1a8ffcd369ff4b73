"""A pipeline spanning two processes: the LLM brick runs elsewhere, the gateway composes it.

Start the brick's server (``python examples/grpc_server.py`` serves its EchoLLM
as the brick ``echo`` on port 50051), then the gateway::

    python examples/grpc_remote_brick.py 127.0.0.1:50051

The gateway guards requests locally, calls the remote LLM over gRPC and
streams the result over SSE on port 8000. The same pipeline runs on every
transport under the gateway command, with the brick server's address in
``LLMBRICK_REMOTE_BRICK``::

    LLMBRICK_REMOTE_BRICK=127.0.0.1:50051 llmbrick serve examples/grpc_remote_brick.py

Then::

    curl -N http://127.0.0.1:8000/chat/completions -H 'content-type: application/json' \
        -d '{"messages": [{"role": "user", "content": "hello from afar"}]}'
"""

from __future__ import annotations

import os
import sys

from llmbrick import Pipeline
from llmbrick.bricks import KeywordGuard
from llmbrick_grpc import RemoteBrick
from llmbrick_sse import SSEServer


def build(address: str) -> Pipeline:
    """The gateway's pipeline: a local guard, then the remote ``echo`` brick at ``address``.

    ``RemoteBrick`` asks the server for the brick's kind and models and checks
    them against this pipeline now, at assembly time.
    """
    return Pipeline().add_brick(KeywordGuard(["password"])).add_brick(RemoteBrick(address, "echo"))


def __getattr__(name: str) -> object:
    # `llmbrick serve` looks up `pipeline`; build it only then, when the brick server is up.
    if name == "pipeline":
        return build(os.environ.get("LLMBRICK_REMOTE_BRICK", "127.0.0.1:50051"))
    raise AttributeError(name)


if __name__ == "__main__":
    SSEServer(build(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")).run(port=8000)
