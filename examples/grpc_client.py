"""Call the gRPC example server with the Python client: stream, invoke and list.

Start ``python examples/grpc_server.py`` first, then run
``python examples/grpc_client.py [host:port]``.
"""

from __future__ import annotations

import asyncio
import sys

from llmbrick_grpc import GrpcClient


async def main(address: str = "127.0.0.1:50051") -> list[str]:
    """Run the demo against ``address``; returns the lines it printed."""
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(line)

    async with GrpcClient(address, timeout=30) as client:
        say("flows: " + ", ".join(flow["name"] for flow in await client.list_flows()))
        request = {"messages": [{"role": "user", "content": "hello over gRPC"}]}
        async for event in client.stream(None, request):
            say(f"{event['id']:>2} {event['type']:<5} {event.get('text', '')!r}")
        result = await client.invoke("countdown", {"start": 2})
        say("countdown: " + " ".join(str(e["data"]["n"]) for e in result["events"][:-1]))
        refused = await client.invoke(None, {"messages": [{"role": "user", "content": "bomb"}]})
        say(f"refused: {refused['error']}")
        missing = await client.invoke("no-such-flow", request)
        if missing["error"] is not None:
            say(f"error: {missing['error']['code']}: {missing['error']['message']}")
    return lines


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:2]))
