"""Request context, API keys, per-flow authorization and per-caller limits, in the core."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest

from llmbrick import (
    ApiKeyAuth,
    CallerLimits,
    ChatRequest,
    ErrorCode,
    Event,
    FlowRegistry,
    FlowRuntime,
    Overloaded,
    PermissionDenied,
    Principal,
    RequestContext,
    Unauthenticated,
    current_context,
)
from llmbrick.auth import hash_key
from llmbrick.context import Headers
from llmbrick.stream import FAIR_SLICE

HELLO = {"messages": [{"role": "user", "content": "hello"}]}


def test_headers_are_case_insensitive_read_only_and_keep_repeats() -> None:
    headers = Headers([("X-Thing", "a"), ("x-thing", "b"), ("Authorization", "Bearer k")])
    assert headers["X-THING"] == "a, b"
    assert headers.get_all("x-thing") == ["a", "b"]
    assert "authorization" in headers and "missing" not in headers
    assert len(headers) == 2
    assert "Bearer" not in repr(headers), "a repr must not show credentials"
    with pytest.raises(TypeError):
        headers["x"] = "y"  # type: ignore[index]


def test_raw_headers_read_the_same_as_decoded_ones() -> None:
    raw = [(b"x-thing", b"a"), (b"X-Thing", b"b"), (b"authorization", b"Bearer k"), (b"v", b"\xe9")]
    headers = Headers.from_raw(raw)
    assert headers["X-THING"] == "a, b" and headers.get("x-thing") == "a, b"
    assert headers.get_all("x-thing") == ["a", "b"]
    assert headers.get("missing") is None and headers.get("missing", "d") == "d"
    assert headers["v"] == "\u00e9", "HTTP header bytes are latin-1"
    assert "authorization" in headers and "missing" not in headers
    assert sorted(headers) == ["authorization", "v", "x-thing"] and len(headers) == 3
    assert dict(headers) == dict(
        Headers(
            [("x-thing", "a"), ("x-thing", "b"), ("authorization", "Bearer k"), ("v", "\u00e9")]
        )
    )
    assert "Bearer" not in repr(headers)
    assert 3 not in headers  # type: ignore[comparison-overlap]
    with pytest.raises(KeyError):
        headers["missing"]


def test_request_id_is_taken_when_sane_else_generated() -> None:
    assert RequestContext(headers={"X-Request-Id": "abc-123"}).request_id == "abc-123"
    generated = {RequestContext().request_id for _ in range(50)}
    assert len(generated) == 50
    for bad in ["", "x" * 200, "has space", "line\nbreak"]:
        context = RequestContext(headers={"x-request-id": bad})
        assert context.request_id != bad and len(context.request_id) == 16


def test_bearer_token_and_caller() -> None:
    assert RequestContext(headers={"authorization": "Bearer  k1 "}).bearer_token() == "k1"
    assert RequestContext(headers={"authorization": "Basic xyz"}).bearer_token() is None
    assert RequestContext(credentials="from-subprotocol").bearer_token() == "from-subprotocol"
    assert RequestContext(peer="10.0.0.7:5555").caller == "peer:10.0.0.7"
    assert RequestContext(peer="[::1]:5555").caller == "peer:::1"
    assert RequestContext().caller == "anonymous"
    context = RequestContext(peer="10.0.0.7:5555")
    context.principal = Principal("alice")
    assert context.caller == "alice"


async def test_api_keys_plain_hashed_named_and_scoped(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(
        f"# a comment\n\nplain-key\n{hash_key('hashed-key')} name=bob scopes=chat,admin\n"
    )
    auth = ApiKeyAuth.from_file(keys)
    assert len(auth) == 2
    plain = await auth(RequestContext(headers={"authorization": "Bearer plain-key"}))
    assert plain.id.startswith("key-") and "plain" not in plain.id
    bob = await auth(RequestContext(headers={"authorization": "Bearer hashed-key"}))
    assert bob == Principal("bob", frozenset({"chat", "admin"}))
    for headers in [{}, {"authorization": "Bearer wrong"}, {"authorization": "Bearer "}]:
        with pytest.raises(Unauthenticated) as caught:
            await auth(RequestContext(headers=headers))
        assert "wrong" not in caught.value.message and "plain-key" not in caught.value.message
    assert "plain-key" not in repr(auth)


def test_bad_key_files_name_the_line_not_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line 2: sha256"):
        ApiKeyAuth(["good", "sha256:zz"])
    with pytest.raises(ValueError, match="line 1: unknown option 'colour'") as caught:
        ApiKeyAuth(["top-secret colour=red"])
    assert "top-secret" not in str(caught.value)
    with pytest.raises(ValueError, match="at least one key"):
        ApiKeyAuth(["# only a comment"])
    with pytest.raises(ValueError, match="cannot read"):
        ApiKeyAuth.from_file(tmp_path / "missing")
    assert len(ApiKeyAuth.from_env("a, b,,c")) == 3


async def two_texts(request: ChatRequest) -> AsyncIterator[Event]:
    yield {"type": "text", "text": "a"}
    yield {"type": "text", "text": "b"}


def secured_runtime(**options: object) -> FlowRuntime:
    registry = FlowRegistry()
    registry.register("default", two_texts)
    registry.register("admin", two_texts, allow=["admin"])
    auth = ApiKeyAuth(["k-alice name=alice", "k-root name=root scopes=admin"])
    return FlowRuntime(registry, authenticator=auth, **options)  # type: ignore[arg-type]


def keyed(key: str | None) -> RequestContext:
    return RequestContext("test", headers={"authorization": f"Bearer {key}"} if key else {})


async def test_the_runtime_authenticates_before_anything_else() -> None:
    runtime = secured_runtime()
    # Even an unknown flow says "unauthenticated" first: no hint of which flows exist.
    events = [e async for e in runtime.run("missing", HELLO, context=keyed(None))]
    assert events[0]["error"]["code"] == "UNAUTHENTICATED"
    events = [e async for e in runtime.run(None, HELLO, context=keyed("nope"))]
    assert events[0]["error"]["code"] == "UNAUTHENTICATED"
    events = [e async for e in runtime.run(None, HELLO, context=keyed("k-alice"))]
    assert [e["type"] for e in events] == ["text", "text", "done"]
    # start() never runs a flow for a context that skipped authenticate().
    with pytest.raises(Unauthenticated):
        runtime.start(None, HELLO, context=keyed("k-alice"))


async def test_flows_with_allow_check_the_principal() -> None:
    runtime = secured_runtime()
    with pytest.raises(PermissionDenied, match="may not run flow 'admin'"):
        await runtime.open("admin", HELLO, context=keyed("k-alice"))
    stream = await runtime.open("admin", HELLO, context=keyed("k-root"))
    await stream.aclose()
    # Without an authenticator nobody is anybody: restricted flows stay closed.
    open_registry = FlowRegistry()
    open_registry.register("admin", two_texts, allow=["admin"])
    with pytest.raises(PermissionDenied):
        FlowRuntime(open_registry).start("admin", HELLO)
    with pytest.raises(TypeError, match="not one string"):
        open_registry.register("x", two_texts, allow="admin")


async def test_the_flow_sees_its_context() -> None:
    seen: list[RequestContext | None] = []

    async def who(request: ChatRequest) -> AsyncIterator[Event]:
        seen.append(current_context())
        yield {"type": "text", "text": "hi"}

    registry = FlowRegistry()
    registry.register("default", who)
    runtime = FlowRuntime(registry, authenticator=ApiKeyAuth(["k name=carol"]))
    context = keyed("k")
    context.headers  # noqa: B018 - read-only, just present
    async with aclosing(await runtime.open(None, HELLO, context=context)) as stream:
        async for _ in stream:
            pass
    assert seen == [context]
    assert context.principal is not None and context.principal.id == "carol"
    assert context.stream_id == stream.id and context.flow == "default"
    assert current_context() is None, "the test's own task was never a stream's"


def test_caller_limits_cap_streams_and_rate_with_a_retry_delay() -> None:
    now = [100.0]
    limits = CallerLimits(max_streams=2, rate=2.0, clock=lambda: now[0])
    limits.acquire("a")
    limits.acquire("a")
    with pytest.raises(Overloaded) as caught:
        limits.acquire("a")
    assert caught.value.details == {"retryAfter": 1.0, "limit": "caller"}
    limits.acquire("b")  # callers are independent
    limits.release("a")
    limits.release("a")
    # The bucket (burst 2) is empty after a's two starts: the next start waits half a second.
    with pytest.raises(Overloaded) as caught:
        limits.acquire("a")
    assert caught.value.retry_after == 0.5
    now[0] += 0.5
    limits.acquire("a")
    assert limits.running("a") == 1
    with pytest.raises(ValueError):
        CallerLimits(rate=0)


async def test_the_runtime_applies_caller_limits_and_releases_them() -> None:
    runtime = secured_runtime(caller_limits=CallerLimits(max_streams=1))
    first = await runtime.open(None, HELLO, context=keyed("k-alice"))
    with pytest.raises(Overloaded) as caught:
        await runtime.open(None, HELLO, context=keyed("k-alice"))
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED
    other = await runtime.open(None, HELLO, context=keyed("k-root"))
    await first.aclose()
    await other.aclose()
    again = await runtime.open(None, HELLO, context=keyed("k-alice"))
    await again.collect()
    assert runtime.caller_limits is not None and runtime.caller_limits.running("alice") == 0


async def test_the_flow_can_read_the_clients_deadline() -> None:
    left: list[float | None] = []

    async def budget(request: ChatRequest) -> AsyncIterator[Event]:
        context = current_context()
        assert context is not None
        left.append(context.time_left())
        yield {"type": "text", "text": "ok"}

    registry = FlowRegistry()
    registry.register("default", budget)
    context = RequestContext("test", deadline=time.monotonic() + 60)
    events = [e async for e in FlowRuntime(registry).run(None, HELLO, context=context)]
    assert events[-1]["type"] == "done"
    assert left[0] is not None and 0 < left[0] <= 60


async def test_a_flow_that_never_awaits_lets_the_loop_turn() -> None:
    """Between two turns of the loop, a greedy stream produces at most FAIR_SLICE events."""
    total = FAIR_SLICE * 20

    async def greedy(request: ChatRequest) -> AsyncIterator[Event]:
        for n in range(total):
            yield {"type": "text", "text": str(n)}

    registry = FlowRegistry()
    registry.register("default", greedy)
    seen = 0
    per_turn: list[int] = []
    finished = False

    async def consume() -> None:
        nonlocal seen, finished
        async for _ in FlowRuntime(registry).run(None, HELLO):
            seen += 1
        finished = True

    async def watch() -> None:
        last = seen
        while not finished:
            await asyncio.sleep(0)
            per_turn.append(seen - last)
            last = seen

    await asyncio.gather(consume(), watch())
    assert seen == total + 1
    assert max(per_turn) <= FAIR_SLICE
    assert len(per_turn) >= total // FAIR_SLICE
