"""The README's ``llmbrick call`` examples run as written against what the README serves."""

from __future__ import annotations

import re
import shlex

from tests.gateway.cli_support import ROOT, gateway, run

COMMAND = re.compile(r"^(?:\.venv/bin/)?llmbrick (serve|call)\b(.*)$")


def examples() -> list[tuple[list[str], list[list[str]]]]:
    """Each shell block's ``serve`` arguments (the demo if none) and its ``call`` commands."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        serve: list[str] = []
        calls = []
        for line in block.replace("\\\n", " ").splitlines():  # continued lines as one
            command = COMMAND.match(line.strip())
            if command is None:
                continue
            args = shlex.split(command.group(2), comments=True)
            if command.group(1) == "serve":
                serve = args
            else:
                calls.append(args)
        if calls:
            found.append((serve, calls))
    return found


async def test_every_call_example_runs() -> None:
    blocks = examples()
    assert sum(len(calls) for _, calls in blocks) >= 6, blocks
    for serve, calls in blocks:
        async with gateway(*serve) as served:
            # The README's addresses are the defaults; the gateway here has free ports.
            ports = {
                "127.0.0.1:8000": served.http.removeprefix("http://"),
                "127.0.0.1:50051": served.grpc_address,
            }
            for url, *rest in calls:
                for default, real in ports.items():
                    url = url.replace(default, real)
                code, out, err = await run("call", url, *rest)
                assert code == 0 and out, (serve, url, rest, err)
