"""Clients for the tests of ``serve``'s options: each transport spoken directly, with keys and TLS.

The project's clients hide what these tests look at (statuses, headers, gRPC status
codes and trailers), so each call here is the plainest one its library allows:
httpx for SSE, ``websockets`` for WebSocket, a bare ``grpc.aio`` stub for gRPC.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import trustme
from websockets.asyncio.client import connect as websocket_connect

from llmbrick_grpc._generated import flow_pb2, flow_pb2_grpc
from llmbrick_grpc.codec import decode_event, encode_request
from tests.support import TIMEOUT

__all__ = [
    "Certificates",
    "GrpcAnswer",
    "certificates",
    "chat",
    "grpc_flows",
    "grpc_stream",
    "raw_http",
    "websocket_stream",
]

#: The app every test of this module serves (see flows_app.py).
APP = "tests/gateway/flows_app.py:registry"


def chat(flow: str, **metadata: Any) -> dict[str, Any]:
    """A chat request for ``flow`` with ``metadata`` (values as strings)."""
    return {
        "flow": flow,
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {key: str(value) for key, value in metadata.items()},
    }


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


@dataclass
class GrpcAnswer:
    """How a gRPC call ended: its status, the events before, the trailing metadata."""

    code: grpc.StatusCode
    events: list[dict[str, Any]]
    trailers: dict[str, Any]


def _channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, credentials)


async def grpc_stream(
    address: str,
    request: dict[str, Any],
    *,
    key: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    until_first: asyncio.Event | None = None,
    release: asyncio.Event | None = None,
) -> GrpcAnswer:
    """``FlowService/Stream`` over a new channel; ``until_first`` is set at the first
    event, after which the call waits for ``release`` (if given) before reading on."""
    metadata = tuple((name.lower(), value) for name, value in bearer(key).items())
    async with _channel(address, credentials) as channel:
        stub = flow_pb2_grpc.FlowServiceStub(channel)
        call = stub.Stream(encode_request(request), metadata=metadata, timeout=3 * TIMEOUT)
        events: list[dict[str, Any]] = []
        try:
            async for response in call:
                events += [dict(decode_event(event)) for event in response.events]
                if until_first is not None and not until_first.is_set():
                    until_first.set()
                    if release is not None:
                        await release.wait()
        except grpc.aio.AioRpcError as exc:
            return GrpcAnswer(exc.code(), events, dict(exc.trailing_metadata() or ()))
        return GrpcAnswer(grpc.StatusCode.OK, events, {})


async def grpc_flows(
    address: str, *, credentials: grpc.ChannelCredentials | None = None
) -> grpc.StatusCode:
    """The status of ``FlowService/ListFlows`` over a new channel."""
    async with _channel(address, credentials) as channel:
        stub = flow_pb2_grpc.FlowServiceStub(channel)
        try:
            await stub.ListFlows(flow_pb2.ListFlowsRequest(), timeout=TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def websocket_stream(
    url: str,
    request: dict[str, Any],
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> list[dict[str, Any]]:
    """One stream over a new WebSocket: its events, up to the terminal one."""
    options: dict[str, Any] = {"additional_headers": {**bearer(key), **(headers or {})}}
    if context is not None:
        options["ssl"] = context
    async with asyncio.timeout(TIMEOUT), websocket_connect(url, **options) as socket:
        await socket.send(json.dumps({"type": "start", "id": "1", "request": request}))
        events: list[dict[str, Any]] = []
        while True:
            message = json.loads(await socket.recv())
            event = message.get("event")
            if event is None:
                continue  # the server's "started" reply
            events.append(event)
            if event["type"] in ("done", "error"):
                return events


async def raw_http(address: tuple[str, int], data: bytes, *, then: bytes = b"") -> bytes:
    """Send ``data`` on a new connection, then ``then``; everything until the server closes."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        await writer.drain()
        if then:
            writer.write(then)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


@dataclass
class Certificates:
    """A throwaway CA, a server certificate for this machine, and a client certificate
    from another CA (for mutual TLS), written as PEM files."""

    ca: Path
    cert: Path
    key: Path
    client_ca: Path
    client_cert: bytes
    client_key: bytes

    def client_context(self) -> ssl.SSLContext:
        """What a client trusting only the throwaway CA uses (HTTPS, WSS)."""
        return ssl.create_default_context(cafile=str(self.ca))

    def grpc_credentials(self, *, with_client_cert: bool = False) -> grpc.ChannelCredentials:
        """gRPC channel credentials trusting the CA, with the client certificate if asked."""
        if not with_client_cert:
            return grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.client_key,
            certificate_chain=self.client_cert,
        )


def certificates(directory: Path) -> Certificates:
    """Make the CA and certificates with ``trustme`` and write them under ``directory``."""
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost", "::1")
    clients = trustme.CA()
    client = clients.issue_cert("client@example.com")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key", "client_ca")}
    authority.cert_pem.write_to_path(str(paths["ca"]))
    paths["cert"].write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(paths["key"]))
    clients.cert_pem.write_to_path(str(paths["client_ca"]))
    return Certificates(
        **paths,
        client_cert=b"".join(blob.bytes() for blob in client.cert_chain_pems),
        client_key=client.private_key_pem.bytes(),
    )
