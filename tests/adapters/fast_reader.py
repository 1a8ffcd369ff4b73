"""A client in its own process that reads a response as fast as the kernel delivers it.

``python fast_reader.py sse HOST PORT`` posts a chat request; ``... ws HOST PORT``
opens a WebSocket and starts a stream. Either way it then reads raw bytes (no
parsing) until it is killed, printing ``reading`` once the first bytes arrived.
A server writing to it never has to wait: what the greedy-flow tests need, and what
a client in the test's own process (sharing its loop or its GIL) cannot be.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys

BODY = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()


def _sse(client: socket.socket) -> None:
    client.sendall(
        b"POST /chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
    )


def _ws(client: socket.socket) -> None:
    key = base64.b64encode(os.urandom(16))
    client.sendall(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n\r\n" % key
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += client.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    payload = json.dumps({"type": "start", "id": "g", "request": json.loads(BODY)}).encode()
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    # One masked text frame (client frames must be masked), payload under 64 KiB.
    client.sendall(b"\x81" + bytes([0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked)


def main() -> None:
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = socket.create_connection((host, port))
    (_sse if kind == "sse" else _ws)(client)
    client.recv(1 << 16)
    print("reading", flush=True)
    while client.recv(1 << 20):
        pass


if __name__ == "__main__":
    main()
