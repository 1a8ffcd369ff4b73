"""What the command and the adapters say when an extra is missing, for every extra.

The fresh-virtualenv test (test_wheel.py) installs only ``[sse]``. Other
combinations are checked here, faster: each case runs in a subprocess whose
import system reports the named libraries as not installed, exactly as Python
does for a missing package (``ModuleNotFoundError`` with its ``name``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.gateway.cli_support import ROOT

#: Prepended to each subprocess's code: the named top-level packages "are not installed".
_WITHOUT = """
import sys

class _NotInstalled:
    def __init__(self, names):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled(NAMES))
"""

EVERY_TRANSPORT_LIBRARY = ("litestar", "uvicorn", "httpx", "websockets", "grpc", "google")


def without(names: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which ``names`` cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT.replace("NAMES", repr(names)) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )


def command(names: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    """``llmbrick *args`` with ``names`` not installed."""
    return without(names, f"from llmbrick_gateway.cli import main\nsys.exit(main({list(args)!r}))")


def hint(adapter: str, extra: str, missing: str) -> str:
    return (
        f"{adapter} needs the '{extra}' extra ({missing} is missing): pip install '.[{extra}]' "
        f"from a checkout of llmbrick, or pip install 'llmbrick[{extra}] @ <wheel or git URL>'"
    )


def test_each_adapter_names_its_extra_and_how_to_install_it() -> None:
    cases = [
        ("httpx", "llmbrick_sse", "sse", "llmbrick.servers.sse", "SSEServer"),
        ("websockets", "llmbrick_websocket", "websocket", "llmbrick.servers.websocket", "connect"),
        ("grpc", "llmbrick_grpc", "grpc", "llmbrick.servers.grpc", "GrpcServer"),
    ]
    for missing, adapter, extra, shim, name in cases:
        done = without(
            (missing,),
            f"""
            for code in ("import {adapter}", "from {shim} import {name}"):
                try:
                    exec(code)
                except ImportError as exc:
                    print(exc)
            """,
        )
        assert done.stdout.splitlines() == [hint(adapter, extra, missing)] * 2, done.stderr


def test_without_any_transport_help_and_flows_work_and_serve_says_what_to_install() -> None:
    for args in (["--help"], ["serve", "--help"], ["flows", "examples/multi_flow.py:server"]):
        done = command(("grpc", "google", "websockets"), *args)
        assert (done.returncode, done.stderr) == (0, ""), args
    done = command(("grpc", "google", "websockets"), "flows")  # the demo needs no transport
    assert done.returncode == 0 and done.stdout.startswith("default: Demo"), done.stderr
    done = command(EVERY_TRANSPORT_LIBRARY, "serve")
    assert done.returncode == 2
    assert done.stderr == (
        "llmbrick: no transport can be served with the extras installed: "
        f"{hint('llmbrick_sse', 'sse', 'httpx')}\n"
    )
    done = command(EVERY_TRANSPORT_LIBRARY, "call", "http://127.0.0.1:8000", "-m", "hi")
    assert done.returncode == 2
    assert done.stderr == (
        f"llmbrick: calling http:// URLs: {hint('llmbrick_sse', 'sse', 'httpx')}\n"
    )


def test_websocket_in_the_gateway_needs_the_sse_extra_too() -> None:
    # The gateway's /flows and /healthz routes come from the SSE adapter.
    done = command(("httpx",), "serve", "--transports", "websocket")
    assert done.returncode == 2
    assert done.stderr == (
        f"llmbrick: --transports websocket: {hint('llmbrick_sse', 'sse', 'httpx')}\n"
    )
