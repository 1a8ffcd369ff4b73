"""A newcomer's mistakes with the ``llmbrick`` command: each is one line that says what to do.

Every case runs the command as a subprocess against real sockets: a port held
without listening (connections refused), a port someone listens on (in use),
and a gateway serving the demo on both its ports.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

from tests.gateway.cli_support import closed_port, gateway, run
from tests.support import bound_socket

FREE_PORTS = {"LLMBRICK_HTTP_PORT": "0", "LLMBRICK_GRPC_PORT": "0"}


def one_line(err: str) -> str:
    """The only line of ``err``; fails if there are more (a traceback, a C-core log line)."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


async def test_calling_a_server_that_is_down_says_to_start_it() -> None:
    with closed_port() as held:
        address = f"127.0.0.1:{held.getsockname()[1]}"
        for url in (f"http://{address}", f"ws://{address}/ws", f"grpc://{address}"):
            code, out, err = await run("call", url, "-m", "hi")
            assert (code, out) == (1, ""), err
            assert one_line(err) == (
                f"llmbrick: nothing is listening at {address}: start the server "
                "(llmbrick serve) or check the host and port in the URL"
            )


async def test_debug_shows_the_traceback_behind_the_line() -> None:
    with closed_port() as held:
        address = f"127.0.0.1:{held.getsockname()[1]}"
        code, _, err = await run("call", f"http://{address}", "-m", "hi", "--debug")
    assert code == 1
    assert err.startswith("Traceback (most recent call last):"), err
    assert "httpx.ConnectError" in err
    assert err.splitlines()[-1].startswith(f"llmbrick: nothing is listening at {address}")


async def test_a_scheme_that_does_not_fit_the_port_names_the_right_url() -> None:
    async with gateway() as served:
        http, grpc = served.http.removeprefix("http://"), served.grpc_address
        cases = [
            (
                f"http://{grpc}",
                f"llmbrick: {grpc} did not answer as an HTTP/1.1 server (illegal request line): "
                f"if {grpc} is a gRPC port, use grpc://{grpc}",
            ),
            (
                f"ws://{grpc}/ws",
                f"llmbrick: {grpc} did not answer as a WebSocket server (did not receive a valid "
                f"HTTP response): if {grpc} is a gRPC port, use grpc://{grpc}",
            ),
            (
                f"grpc://{http}",
                f"llmbrick: {http} is an HTTP/1.1 server, not gRPC: use http://{http} (SSE) "
                f"or ws://{http}/ws (WebSocket)",
            ),
            (
                f"ws://{http}/chat",
                f"llmbrick: ws://{http}/chat refused the WebSocket handshake (HTTP 403): "
                f"the gateway's WebSocket URL is ws://{http}/ws",
            ),
        ]
        for url, message in cases:
            code, out, err = await run("call", url, "-m", "hi")
            assert (code, out) == (1, ""), (url, err)
            assert one_line(err) == message
        # The server's own error for the path (its code is the SSE adapter's), and a hint.
        code, out, err = await run("call", f"http://{http}/ws", "-m", "hi")
        assert (code, out) == (1, "")
        assert one_line(err).startswith("error ")
        assert one_line(err).endswith(
            ": Method Not Allowed (/ws is not an SSE endpoint: the gateway's is "
            f"/chat/completions; for WebSocket use ws://{http}/ws)"
        )


async def test_an_unknown_flow_is_the_servers_not_found_on_every_transport() -> None:
    async with gateway() as served:
        for url in (served.http, served.urls["WebSocket"], served.urls["gRPC"]):
            code, out, err = await run("call", url, "nope", "-m", "hi")
            assert (code, out) == (1, ""), err
            assert one_line(err) == "error NOT_FOUND: no flow named 'nope'; known flows: 'default'"


async def test_a_port_in_use_says_which_option_to_change() -> None:
    with bound_socket() as taken:
        port = taken.getsockname()[1]
        for option, label in (("--http-port", "HTTP: SSE and WebSocket"), ("--grpc-port", "gRPC")):
            code, out, err = await run("serve", option, str(port), env=FREE_PORTS)
            assert (code, out) == (1, ""), err
            # One line: for gRPC, no C-core log line and no RuntimeError before it.
            assert one_line(err) == (
                f"llmbrick: port {port} on 127.0.0.1 is in use ({label}): stop what runs "
                f"there, or pick another port with {option} (0 picks a free one)"
            )


async def test_the_same_port_for_http_and_grpc_is_refused() -> None:
    code, _, err = await run("serve", "--http-port", "8123", "--grpc-port", "8123")
    assert code == 2
    assert one_line(err) == (
        "llmbrick: --http-port and --grpc-port are both 8123: give them different ports"
    )


async def test_bad_urls_say_what_a_url_looks_like() -> None:
    forms = "http://HOST:PORT (SSE), ws://HOST:PORT/ws (WebSocket) or grpc://HOST:PORT (gRPC)"
    cases = [
        ("localhost:8000", f"llmbrick: cannot tell the transport of 'localhost:8000': use {forms}"),
        ("http://", f"llmbrick: bad URL 'http://': no host; give {forms}"),
        (
            "http://127.0.0.1:80000",
            f"llmbrick: bad URL 'http://127.0.0.1:80000' (Port out of range 0-65535): give {forms}",
        ),
        ("http://[::1", f"llmbrick: bad URL 'http://[::1' (Invalid IPv6 URL): give {forms}"),
        (
            "grpc://127.0.0.1",
            "llmbrick: bad URL 'grpc://127.0.0.1': a gRPC URL needs its port, e.g. "
            "grpc://HOST:50051",
        ),
        (
            "grpc://127.0.0.1:50051/default",
            "llmbrick: bad URL 'grpc://127.0.0.1:50051/default': a gRPC URL has no path; "
            "give grpc://HOST:PORT",
        ),
    ]
    for url, message in cases:
        code, out, err = await run("call", url, "-m", "hi")
        assert (code, out) == (2, ""), err
        assert one_line(err) == message


async def test_options_say_what_they_expect() -> None:
    code, _, err = await run("serve", "--http-port", "abc")
    assert code == 2
    assert one_line(err) == (
        "llmbrick serve: --http-port: 'abc' is not a port: give a number from 0 to 65535 "
        "(see llmbrick serve --help)"
    )
    code, _, err = await run("serve", "--max-streams", "0")
    assert code == 2 and "--max-streams: '0' is not a whole number of at least 1" in one_line(err)
    code, _, err = await run()
    assert code == 2
    assert one_line(err) == (
        "llmbrick: the following arguments are required: command (see llmbrick --help)"
    )


async def test_serve_help_shows_every_default() -> None:
    code, out, err = await run("serve", "--help", env={"COLUMNS": "200"})
    assert code == 0, err
    # One entry per argument: its line ("  --x X  help") and the deeper-indented rest.
    shown: dict[str, str] = {}
    current = ""
    for line in out.splitlines():
        if re.match(r"  \S", line):
            current = line.split()[0]
            shown[current] = line.strip()
        elif line.startswith("   ") and current:
            shown[current] += " " + line.strip()
        else:
            current = ""
    assert set(shown) == {
        "target",
        "-h,",
        "--host",
        "--http-port",
        "--grpc-port",
        "--transports",
        "--max-streams",
        "--timeout",
        "--drain-timeout",
        "--log-level",
        "--debug",
        "--workers",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--api-keys-file",
        "--max-streams-per-key",
        "--rate-per-key",
        "--store",
        "--grace",
        "--max-connections",
        "--max-header-bytes",
        "--header-timeout",
        "--body-timeout",
        "--keep-alive-timeout",
        "--max-body-size",
        "--ping-interval",
        "--allowed-host",
        "--cors-origin",
        "--no-openai",
        "--no-ui",
        "--no-playground",
        "--metrics,",
        "--metrics-port",
        "--otel",
        "--log-format",
    }, shown
    for name, text in shown.items():
        if name != "-h,":
            assert "(default: " in text, text
            assert "; LLMBRICK_" in text, text
    assert "(default: 8000; LLMBRICK_HTTP_PORT)" in shown["--http-port"]
    assert "(default: every transport whose extra is installed;" in shown["--transports"]
    assert "(default: the built-in demo, a guard and an echo LLM;" in shown["target"]
    assert "(default: 15; LLMBRICK_PING_INTERVAL)" in shown["--ping-interval"]
    assert "(default: 1; LLMBRICK_WORKERS)" in shown["--workers"]


async def test_an_import_error_in_the_app_shows_the_users_frames_only(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "from llmbrick import Pipeline\nimport helper\n\npipeline = Pipeline()\n"
    )
    (tmp_path / "helper.py").write_text("ready = False\nraise RuntimeError('no API key set')\n")
    code, out, err = await run("serve", "app.py", cwd=tmp_path, env=FREE_PORTS)
    assert (code, out) == (2, "")
    app, helper = tmp_path / "app.py", tmp_path / "helper.py"
    assert err == (
        "llmbrick: importing app.py failed:\n"
        f'  File "{app}", line 2, in <module>\n'
        "    import helper\n"
        f'  File "{helper}", line 2, in <module>\n'
        "    raise RuntimeError('no API key set')\n"
        "RuntimeError: no API key set\n"
    )
    code, _, err = await run("serve", "app.py", "--debug", cwd=tmp_path, env=FREE_PORTS)
    assert code == 2
    assert "llmbrick_gateway" in err and "importlib" in err  # our frames too, when asked


async def test_a_mistake_inside_llmbrick_calls_points_at_the_users_line(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "from llmbrick import Pipeline\n\npipeline = Pipeline().add_brick('echo')\n"
    )
    code, _, err = await run("flows", "app.py", cwd=tmp_path)
    assert code == 2
    assert err.splitlines()[1:3] == [
        f'  File "{tmp_path / "app.py"}", line 3, in <module>',
        "    pipeline = Pipeline().add_brick('echo')",
    ]
    assert err.splitlines()[-1] == (
        "llmbrick.errors.PipelineTypeError: add_brick() needs a Brick, got str"
    )


async def test_a_syntax_error_shows_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("pipeline = (\n")
    code, _, err = await run("flows", "app.py", cwd=tmp_path)
    assert code == 2
    assert err.startswith(f'llmbrick: importing app.py failed:\n  File "{tmp_path / "app.py"}"')
    assert "SyntaxError" in err.splitlines()[-1]


async def test_module_targets_are_found_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "from llmbrick import Pipeline\nfrom llmbrick.bricks import EchoLLM\n"
        'pipeline = Pipeline().add_brick(EchoLLM(prefix="app: "))\n'
    )
    # The console script, as a user runs it: unlike `python -m`, it does not put the
    # working directory on sys.path by itself.
    script = (str(Path(sys.executable).parent / "llmbrick"),)
    async with gateway(
        "app:pipeline", "--transports", "sse", command=script, cwd=tmp_path
    ) as served:
        code, out, err = await run("call", served.http, "-m", "hi", command=script)
        assert (code, out) == (0, "app: hi\n"), err
        returncode, _ = await served.stop()
    assert returncode == 0


async def test_a_file_with_several_apps_asks_which_one(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            from llmbrick import FlowRegistry, FlowRuntime, Pipeline
            from llmbrick.bricks import EchoLLM

            pipeline = Pipeline().add_brick(EchoLLM())
            registry = FlowRegistry()
            runtime = FlowRuntime(registry, timeout=30)

            @registry.flow("shout")
            async def shout(request):
                yield {"type": "text", "text": request.messages[-1].content.upper()}
            """
        )
    )
    code, out, err = await run("serve", "app.py", cwd=tmp_path, env=FREE_PORTS)
    assert (code, out) == (2, "")
    assert one_line(err) == (
        "llmbrick: app.py defines 2 things to serve: pipeline (Pipeline), runtime "
        "(FlowRuntime); pick one with app.py:NAME, e.g. app.py:pipeline"
    )
    code, out, err = await run("flows", "app.py:runtime", cwd=tmp_path)
    assert (code, out.splitlines()[0]) == (0, "shout: (no description)"), err


async def test_call_takes_any_flows_request_as_json(tmp_path: Path) -> None:
    (tmp_path / "sum.json").write_text('{"flow": "sum", "numbers": [5, 6]}')
    async with gateway("examples/multi_flow.py") as served:
        for url in (served.http, served.urls["WebSocket"], served.urls["gRPC"]):
            code, out, err = await run("call", url, "sum", "--request", '{"numbers": [1, 2, 3]}')
            assert code == 0, err
            assert totals(out) == [1, 3, 6]
            code, out, err = await run("call", url, "shout", "-m", "hi there")
            assert (code, out) == (0, "HI THERE \n"), err
        # The flow named in the file's request, and a request on stdin.
        code, out, err = await run("call", served.http, "--request", f"@{tmp_path / 'sum.json'}")
        assert (code, totals(out)) == (0, [5, 11]), err
        code, out, err = await run(
            "call", served.urls["gRPC"], "sum", "--request", "@-", stdin=b'{"numbers": [7]}'
        )
        assert (code, totals(out)) == (0, [7]), err
        code, out, err = await run("call", served.http, "sum", "--request", '{"numbers": []}')
        assert (code, out) == (1, "")
        assert one_line(err).startswith("error INVALID_ARGUMENT: invalid request: numbers:")
    cases = [
        (["--request", "{numbers"], "llmbrick: --request is not JSON (Expecting property name"),
        (["--request", "[1, 2]"], "llmbrick: --request must be a JSON object, not [1, 2]"),
        (
            ["--request", "@no-such.json"],
            "llmbrick: --request @no-such.json: cannot read it (No such file or directory)",
        ),
    ]
    for args, message in cases:
        code, _, err = await run("call", "http://127.0.0.1:1", "sum", *args, cwd=tmp_path)
        assert code == 2
        assert one_line(err).startswith(message), err


def totals(out: str) -> list[int]:
    """The running totals of the ``sum`` flow's events, one JSON line each."""
    events = [json.loads(line) for line in out.splitlines()]
    assert all(event["type"] == "progress" for event in events), out
    return [event["data"]["total"] for event in events]
