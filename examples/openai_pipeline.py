"""A guard in front of a real model: ``KeywordGuard`` + ``OpenAILLM``, on every transport.

Point it at any OpenAI-compatible server with two environment variables and serve it::

    export OPENAI_BASE_URL=https://api.openai.com/v1   # or vLLM, Ollama, LiteLLM, llama.cpp,
    export OPENAI_API_KEY=sk-...                       # or another llmbrick gateway's /v1
    llmbrick serve examples/openai_pipeline.py

``LLMBRICK_MODEL`` picks the model (default ``gpt-4o-mini``). Clients of every transport,
and OpenAI SDKs through the gateway's own ``/v1``, then reach the model through the guard.
"""

from __future__ import annotations

import os

from llmbrick import OpenAILLM, Pipeline
from llmbrick.bricks import KeywordGuard

pipeline = (
    Pipeline(description="A keyword guard in front of an OpenAI-compatible model.")
    .add_brick(KeywordGuard(["bomb", "password"], name="guard"))
    .add_brick(OpenAILLM(os.environ.get("LLMBRICK_MODEL", "gpt-4o-mini"), name="model"))
)
