"""Install the built wheel with only the ``sse`` extra, as the README says, and use it.

One fresh virtualenv for the whole module: the wheel is built from this checkout
(``pip wheel``), installed with ``[sse]`` from the package index through the
machine's pip cache, and every check below runs the installed command or
interpreter as a subprocess, from a folder outside the checkout so nothing of
the checkout is imported by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from tests.gateway.cli_support import ROOT, Served, gateway, run

#: Seconds for building the wheel and installing it with its dependencies.
INSTALL_TIMEOUT = 600

GRPC_HINT = (
    "pip install '.[grpc]' from a checkout of llmbrick, "
    "or pip install 'llmbrick[grpc] @ <wheel or git URL>'"
)


class Installed:
    """The fresh virtualenv: its ``bin`` folder and a working folder outside the checkout.

    ``env`` is this environment without the variables that would put other code on
    the virtualenv's import path (a developer's PYTHONPATH pointing at the checkout).
    """

    def __init__(self, bin_dir: Path, work: Path) -> None:
        self.bin = bin_dir
        self.work = work
        self.command = (str(bin_dir / "llmbrick"),)
        self.env = {
            name: value
            for name, value in os.environ.items()
            if name not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
        }

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "python"), "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            cwd=self.work,
            env=self.env,
            check=False,
            timeout=60,
        )

    async def run(self, *args: str) -> tuple[int, str, str]:
        """The installed ``llmbrick *args``, run in the working folder."""
        return await run(*args, command=self.command, cwd=self.work, base_env=self.env)

    def serve(self, *args: str) -> AbstractAsyncContextManager[Served]:
        """The installed ``llmbrick serve *args`` on free ports, in the working folder."""
        return gateway(*args, command=self.command, cwd=self.work, base_env=self.env)


def _run(*args: str | Path) -> None:
    done = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        check=False,
        timeout=INSTALL_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def sse_only(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    _run(*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", root / "dist", ROOT)
    (wheel,) = (root / "dist").glob("llmbrick-*-py3-none-any.whl")
    # No pip inside the new venv: this interpreter's pip installs into it (faster).
    _run(sys.executable, "-m", "venv", "--without-pip", root / "venv")
    _run(*pip, "--python", root / "venv" / "bin" / "python", "install", "--quiet", f"{wheel}[sse]")
    work = root / "work"
    work.mkdir()
    return Installed(root / "venv" / "bin", work)


def test_the_installed_packages_come_from_the_wheel_and_import_lazily(sse_only: Installed) -> None:
    done = sse_only.python(
        """
        import json, sys
        import llmbrick, llmbrick.servers, llmbrick.servers.grpc, llmbrick_gateway
        loaded = sorted(m.split(".")[0] for m in sys.modules
                        if m.startswith(("llmbrick_", "litestar", "uvicorn", "httpx", "grpc")))
        from llmbrick.servers.sse import SSEClient, SSEServer
        try:
            from llmbrick.servers.grpc import GrpcServer
        except ImportError as exc:
            grpc = str(exc)
        print(json.dumps({"file": llmbrick.__file__, "loaded": sorted(set(loaded)),
                          "sse": SSEServer.__module__, "grpc": grpc}))
        """
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["file"].startswith(str(sse_only.bin.parent))  # not the checkout's copy
    assert found["loaded"] == ["llmbrick_gateway"]  # no adapter, no transport library
    assert found["sse"] == "llmbrick_sse.server"
    assert found["grpc"].startswith("llmbrick_grpc needs the 'grpc' extra (")
    assert found["grpc"].endswith(f"is missing): {GRPC_HINT}")


async def test_the_command_works_with_only_the_sse_extra(sse_only: Installed) -> None:
    for args in (["--help"], ["serve", "--help"], ["call", "--help"], ["flows"]):
        code, out, err = await sse_only.run(*args)
        assert (code, err) == (0, ""), args
        assert out
    code, _, err = await sse_only.run("serve", "--transports", "grpc")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("llmbrick: --transports grpc: llmbrick_grpc needs the 'grpc' extra (")
    assert line.endswith(GRPC_HINT)
    code, _, err = await sse_only.run("call", "grpc://127.0.0.1:50051", "-m", "hi")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("llmbrick: calling grpc:// URLs: llmbrick_grpc needs the 'grpc' extra")
    assert line.endswith(GRPC_HINT)


async def test_serve_an_upstream_style_app_over_sse_and_call_it(sse_only: Installed) -> None:
    (sse_only.work / "app.py").write_text(
        textwrap.dedent(
            """
            from llmbrick import Pipeline
            from llmbrick.bricks import EchoLLM
            from llmbrick.servers.sse import SSEServer

            server = SSEServer(Pipeline().add_brick(EchoLLM(prefix="wheel: ")))
            """
        )
    )
    async with sse_only.serve("app.py", "--transports", "sse") as served:
        assert set(served.urls) == {"SSE", "flows", "health"}
        code, out, err = await sse_only.run("call", served.http, "-m", "hello")
        assert (code, out) == (0, "wheel: hello\n"), err
        returncode, _ = await served.stop()
    assert returncode == 0


async def test_serve_defaults_to_the_installed_transports(sse_only: Installed) -> None:
    # uvicorn[standard], in the sse extra, brings websockets: WebSocket is served too.
    async with sse_only.serve() as served:
        assert set(served.urls) == {"SSE", "WebSocket", "flows", "health"}
        code, out, err = await sse_only.run("call", served.urls["WebSocket"], "-m", "hi")
        assert (code, out) == (0, "You said: hi\n"), err
        returncode, _ = await served.stop()
    assert returncode == 0
