"""Kept streams over HTTP: Location, replay and live follow, Last-Event-ID, cancel, policies."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from llmbrick import ApiKeyAuth, FlowRegistry, FlowRuntime, MemoryStore
from llmbrick_sse import SSEServer
from tests.support import TIMEOUT, Gate, parse_sse, serve_asgi

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}


def serving(gate: Gate, **runtime_options: Any) -> SSEServer:
    registry = FlowRegistry()
    registry.register("cancel", gate.flow, on_disconnect="cancel")
    registry.register("continue", gate.flow, on_disconnect="continue")
    registry.register("grace", gate.flow, on_disconnect="grace", grace=0.05)
    runtime = FlowRuntime(registry, store=MemoryStore(), **runtime_options)
    return SSEServer(runtime)


def texts(frames: list[tuple[str, str, Any]]) -> list[str]:
    return [
        data.get("text", data["type"]) if data["type"] != "error" else data["error"]["code"]
        for name, _, data in frames
        if name != ":"
    ]


async def read_until(response: httpx.Response, count: int) -> list[tuple[str, str, Any]]:
    """Read a streaming response until ``count`` event frames arrived."""
    body = ""
    async for chunk in response.aiter_text():
        body += chunk
        frames = [f for f in parse_sse(body) if f[0] != ":"]
        if len(frames) >= count and body.endswith("\n\n"):
            return frames
    raise AssertionError(f"the stream ended after {body!r}")


@pytest.fixture
async def gate() -> Gate:
    return Gate()


async def test_a_kept_stream_names_its_url_and_resumes_after_a_drop_without_gaps(
    gate: Gate,
) -> None:
    async with serve_asgi(serving(gate).app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            async with client.stream(
                "POST", "/chat/completions", json={**HELLO, "flow": "continue"}
            ) as first:
                location = first.headers["location"]
                stream_id = first.headers["x-llmbrick-stream-id"]
                assert location.startswith(f"/streams/{stream_id}?token=")
                seen = await read_until(first, 2)
            # The connection dropped after two events; the flow goes on ("continue").
            assert [ident for _, ident, _ in seen] == [f"{stream_id}:1", f"{stream_id}:2"]
            gate.release.set()
            last = seen[-1][1]
            response = await client.get(f"/streams/{stream_id}", headers={"last-event-id": last})
            assert response.status_code == 200, response.text
            rest = parse_sse(response.text)
    assert texts(seen) + texts(rest) == ["t1", "t2", "t3", "t4", "t5", "t6", "done"]
    assert rest[0][1] == f"{stream_id}:3"


async def test_a_spec_following_client_reconnects_with_last_event_id(gate: Gate) -> None:
    """EventSource's rule: on a drop, reconnect to the same URL sending the last id seen."""
    gate.release.set()
    gate.hold = 0
    gate.count = 30
    async with serve_asgi(serving(gate).app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            started = await client.post("/streams", json={**HELLO, "flow": "continue"})
            assert started.status_code == 201
            url = started.headers["location"]
            received: list[str] = []
            last_id: str | None = None
            for _ in range(20):
                headers = {"last-event-id": last_id} if last_id else {}
                async with aconnect_sse(client, "GET", url, headers=headers) as source:
                    async for sse in source.aiter_sse():
                        received.append(sse.data)
                        last_id = sse.id
                        if len(received) % 7 == 0 or sse.event == "error":
                            break  # the network drops: reconnect from what we have
                if '"type":"done"' in received[-1]:
                    break
            else:
                raise AssertionError("never finished")
    ids = [int(text.split('"id":"')[1].split('"')[0]) for text in received]
    assert ids == list(range(1, 32)), "nothing twice, nothing skipped"


async def test_re_posting_with_last_event_id_resumes_instead_of_starting_again(gate: Gate) -> None:
    async with serve_asgi(serving(gate).app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            body = {**HELLO, "flow": "continue"}
            async with client.stream("POST", "/chat/completions", json=body) as first:
                seen = await read_until(first, 2)
            gate.release.set()
            again = await client.post(
                "/chat/completions", json=body, headers={"last-event-id": seen[-1][1]}
            )
    assert texts(parse_sse(again.text)) == ["t3", "t4", "t5", "t6", "done"]
    assert gate.ended == ["done"], "the flow ran once"


async def test_delete_cancels_and_the_partial_output_stays(gate: Gate) -> None:
    async with serve_asgi(serving(gate).app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            started = await client.post("/streams", json={**HELLO, "flow": "continue"})
            url = started.headers["location"]
            deleted = await client.delete(url)
            assert deleted.status_code == 204
            await asyncio.wait_for(gate.done.wait(), TIMEOUT)
            replay = await client.get(url)
    assert texts(parse_sse(replay.text)) == ["t1", "t2", "CANCELLED"]
    assert gate.ended == ["cancelled"]


async def test_disconnect_policies_over_sse(gate: Gate) -> None:
    async with serve_asgi(serving(gate).app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            async with client.stream(
                "POST", "/chat/completions", json={**HELLO, "flow": "cancel"}
            ) as r:
                url = r.headers["location"]
                await read_until(r, 2)
            await asyncio.wait_for(gate.done.wait(), TIMEOUT)
            assert gate.ended == ["cancelled"]
            assert texts(parse_sse((await client.get(url)).text)) == ["t1", "t2", "CANCELLED"]
            # grace: nobody comes back, so the flow is cancelled after the grace period
            gate.done.clear()
            async with client.stream(
                "POST", "/chat/completions", json={**HELLO, "flow": "grace"}
            ) as r:
                url = r.headers["location"]
                await read_until(r, 2)
            await asyncio.wait_for(gate.done.wait(), TIMEOUT)
            assert gate.ended[-1] == "cancelled"
            error = parse_sse((await client.get(url)).text)[-1][2]["error"]
            assert error["code"] == "CANCELLED" and "within 0.05 s" in error["message"]


async def test_bad_resumes_get_clear_errors(gate: Gate) -> None:
    gate.release.set()
    runtime_options = {"authenticator": ApiKeyAuth(["ka name=alice", "kb name=bob"])}
    alice = {"authorization": "Bearer ka"}
    bob = {"authorization": "Bearer kb"}
    async with serve_asgi(serving(gate, **runtime_options).app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            done = await client.post(
                "/chat/completions", json={**HELLO, "flow": "continue"}, headers=alice
            )
            stream_id = done.headers["x-llmbrick-stream-id"]
            url = f"/streams/{stream_id}"
            unknown = await client.get("/streams/nope", headers=alice)
            assert unknown.status_code == 404
            other = await client.get(url, headers=bob)
            assert other.status_code == 404 and other.json() == unknown.json()
            for bad in ["x", "-1", f"{stream_id}:y", "other-stream:3"]:
                response = await client.get(url, headers={**alice, "last-event-id": bad})
                assert response.status_code == 400, bad
            past = await client.get(url, headers={**alice, "last-event-id": f"{stream_id}:99"})
            assert texts(parse_sse(past.text)) == ["done"]
            with_token = await client.get(done.headers["location"])  # no key: the token
            assert texts(parse_sse(with_token.text))[-1] == "done"
            assert (await client.get(url)).status_code == 401
    no_store = SSEServer(FlowRuntime(FlowRegistry()))
    async with serve_asgi(no_store.app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            assert (await client.get(f"/streams/{stream_id}")).status_code == 404
            refused = await client.post("/streams", json=HELLO)
            assert refused.status_code in (400, 404)
