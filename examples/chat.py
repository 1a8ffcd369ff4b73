"""The quick start: a guarded chat pipeline served over SSE.

Run it with ``python examples/chat.py`` and stream from it with::

    curl -N http://127.0.0.1:8000/chat/completions -H 'content-type: application/json' \
        -d '{"messages": [{"role": "user", "content": "hello there"}]}'
"""

from __future__ import annotations

from llmbrick import Pipeline
from llmbrick.bricks import EchoLLM, KeywordGuard
from llmbrick_sse import SSEServer

pipeline = (
    Pipeline(description="Echoes your message back, unless it mentions a blocked word.")
    .add_brick(KeywordGuard(["password", "bomb"]))
    .add_brick(EchoLLM(delay=0.05))
)
server = SSEServer(pipeline)

if __name__ == "__main__":
    server.run()
