"""``serve``'s production settings as parsed and checked, before anything is served.

Every option's ``LLMBRICK_*`` variable, the defaults against the adapters' own, the
allowed hosts a bind address implies, what the settings do to a runtime, and every
mistake as one line with exit code 2. The command runs in this process here
(``main``): each case fails before binding a port; the one that could get further
(a Redis store) runs as a subprocess.
"""

from __future__ import annotations

import argparse
import inspect
import os
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from llmbrick import ApiKeyAuth, CallerLimits, FlowRegistry, FlowRuntime, MemoryStore
from llmbrick_gateway._options import (
    HTTP_DEFAULTS,
    SSE_DEFAULTS,
    ServeSettings,
    TlsPaths,
    add_serve_options,
)
from llmbrick_gateway.cli import main
from llmbrick_http import HttpSettings, TlsFiles
from llmbrick_sse import create_http_routers, create_ui_router
from tests.gateway.cli_support import closed_port, run

FREE_PORTS = {"LLMBRICK_HTTP_PORT": "0", "LLMBRICK_GRPC_PORT": "0"}


def settings(*argv: str) -> ServeSettings:
    """``ServeSettings`` from serve options (and the environment, read now)."""
    parser = argparse.ArgumentParser()
    add_serve_options(parser)
    return ServeSettings.from_args(parser.parse_args(list(argv)))


def tls_files(directory: Path) -> dict[str, Path]:
    """A server certificate and key, another certificate's key, and a file that is no PEM."""
    authority = trustme.CA()
    server, other = authority.issue_cert("localhost"), authority.issue_cert("other")
    files = {name: directory / f"{name}.pem" for name in ("cert", "key", "other_key", "junk")}
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(files["key"]))
    other.private_key_pem.write_to_path(str(files["other_key"]))
    files["junk"].write_text("not a certificate\n")
    return files


def test_every_option_has_its_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    keys = tmp_path / "keys.txt"
    keys.write_text("k-1 name=one\n")
    variables = {
        "WORKERS": "3",
        "TLS_CERT": str(files["cert"]),
        "TLS_KEY": str(files["key"]),
        "TLS_CLIENT_CA": str(files["cert"]),
        "API_KEYS_FILE": str(keys),
        "MAX_STREAMS_PER_KEY": "4",
        "RATE_PER_KEY": "2.5",
        "STORE": "none",
        "GRACE": "7",
        "MAX_CONNECTIONS": "50",
        "MAX_HEADER_BYTES": "4096",
        "HEADER_TIMEOUT": "3",
        "BODY_TIMEOUT": "4",
        "KEEP_ALIVE_TIMEOUT": "6",
        "MAX_BODY_SIZE": "2048",
        "PING_INTERVAL": "0",
        "ALLOWED_HOSTS": "api.example.com, *.example.org",
        "CORS_ORIGINS": "https://a.example.com,https://b.example.com",
        "NO_OPENAI": "1",
        "NO_UI": "yes",
        "NO_PLAYGROUND": "true",
        "METRICS": "0",
        "METRICS_PORT": "9100",
        "OTEL": "1",
        "LOG_FORMAT": "json",
    }
    for name, value in variables.items():
        monkeypatch.setenv(f"LLMBRICK_{name}", value)
    got = settings()
    assert got.workers == 3
    assert got.tls == TlsPaths(str(files["cert"]), str(files["key"]), str(files["cert"]))
    assert isinstance(got.auth, ApiKeyAuth) and len(got.auth) == 1
    assert isinstance(got.limits, CallerLimits)
    assert (got.limits.max_streams, got.limits.rate, got.limits.burst) == (4, 2.5, 3)
    assert (got.store, got.grace) == ("none", 7.0)
    assert got.http_limits == {
        "max_connections": 50,
        "max_header_bytes": 4096,
        "header_timeout": 3.0,
        "body_timeout": 4.0,
        "keep_alive_timeout": 6.0,
    }
    assert got.sse == {"ping_interval": 0.0, "max_body_size": 2048}
    assert got.allowed_hosts == ("api.example.com", "*.example.org")
    assert got.cors_origins == ("https://a.example.com", "https://b.example.com")
    assert (got.openai, got.ui, got.playground) == (False, False, False)
    assert (got.metrics, got.metrics_port, got.tracing, got.log_format) == (
        False,
        9100,
        True,
        "json",
    )
    # An option given on the command line wins over its variable.
    again = settings("--allowed-host", "x.example.com", "--workers", "1", "--grace", "1")
    assert (again.allowed_hosts, again.workers, again.grace) == (("x.example.com",), 1, 1.0)
    monkeypatch.delenv("LLMBRICK_API_KEYS_FILE")
    monkeypatch.setenv("LLMBRICK_API_KEYS", "k-a, k-b")
    from_env = settings().auth
    assert from_env is not None and len(from_env) == 2


def test_the_help_names_every_variable_and_default() -> None:
    parser = argparse.ArgumentParser()
    add_serve_options(parser)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help is not None and "LLMBRICK_" in action.help, action.dest
            assert "(default: " in action.help, action.dest


def test_defaults_are_the_adapters_own() -> None:
    plain = settings()
    assert plain.workers == 1
    assert (plain.tls, plain.auth, plain.limits, plain.store, plain.grace) == (None,) * 5
    assert (plain.openai, plain.ui, plain.playground) == (True, True, True)
    defaults = HttpSettings()
    assert {name: getattr(defaults, name) for name in HTTP_DEFAULTS} == HTTP_DEFAULTS
    assert plain.http_limits == HTTP_DEFAULTS and plain.sse == SSE_DEFAULTS
    for factory in (create_http_routers, create_ui_router):
        parameters = inspect.signature(factory).parameters
        assert {name: parameters[name].default for name in SSE_DEFAULTS} == SSE_DEFAULTS


def test_workers_auto_is_the_cores_this_process_may_use() -> None:
    assert settings("--workers", "auto").workers == len(os.sched_getaffinity(0))


def test_allowed_hosts_follow_the_bind_address() -> None:
    loopback = ("localhost", "127.0.0.1", "::1")
    assert settings().http_settings("127.0.0.1").allowed_hosts == loopback
    assert settings().http_settings("::1").allowed_hosts == loopback
    extra = settings("--allowed-host", "api.example.com")
    assert extra.http_settings("localhost").allowed_hosts == (*loopback, "api.example.com")
    # Bound elsewhere, the server cannot know its names: only those given are checked.
    assert settings().http_settings("0.0.0.0").allowed_hosts is None
    assert extra.http_settings("0.0.0.0").allowed_hosts == ("api.example.com",)
    with_tls = replace(settings(), tls=TlsPaths("c.pem", "k.pem", None))
    assert with_tls.http_settings("127.0.0.1").tls == TlsFiles("c.pem", "k.pem", None)


def test_settings_given_to_a_runtime() -> None:
    kept = MemoryStore()
    cleared = FlowRuntime(FlowRegistry(), store=kept, grace=30.0)
    settings("--store", "none").apply(cleared)
    assert cleared.store is None and cleared.grace == 30.0
    given = FlowRuntime(FlowRegistry())
    settings("--store", "memory", "--grace", "2", "--max-streams-per-key", "3").apply(given)
    assert isinstance(given.store, MemoryStore) and given.grace == 2.0
    tuned = FlowRuntime(FlowRegistry())
    settings("--store", "memory?keep_for=60&max_total_bytes=1000000").apply(tuned)
    assert isinstance(tuned.store, MemoryStore)
    assert (tuned.store.keep_for, tuned.store.max_total_bytes) == (60.0, 1_000_000)
    assert given.caller_limits is not None and given.caller_limits.max_streams == 3
    untouched = FlowRuntime(FlowRegistry(), store=kept)
    settings().apply(untouched)  # nothing asked: the app's own settings stay
    assert untouched.store is kept and untouched.authenticator is None


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_every_mistake_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in FREE_PORTS.items():
        monkeypatch.setenv(name, value)
    files = {name: str(path) for name, path in tls_files(tmp_path).items()}
    bad_keys = tmp_path / "bad_keys.txt"
    bad_keys.write_text("k-secret-1 name=one\nk-secret-2 colour=blue\n")
    authenticated = tmp_path / "authenticated.py"
    authenticated.write_text(
        textwrap.dedent(
            """
            from llmbrick import ApiKeyAuth, FlowRuntime, Pipeline
            from llmbrick.bricks import EchoLLM
            from llmbrick.serving import as_runtime

            runtime = as_runtime(Pipeline().add_brick(EchoLLM()))
            runtime.authenticator = ApiKeyAuth(["k-app"])
            """
        )
    )
    missing, junk = str(tmp_path / "missing.pem"), files["junk"]
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (
            ["--tls-cert", missing, "--tls-key", files["key"]],
            {},
            f"llmbrick: --tls-cert {missing}: cannot read it (No such file or directory)",
        ),
        (
            ["--tls-cert", files["cert"]],
            {},
            "llmbrick: TLS needs both --tls-cert and --tls-key: give --tls-key",
        ),
        (
            ["--tls-client-ca", files["cert"]],
            {},
            "llmbrick: --tls-client-ca needs --tls-cert and --tls-key",
        ),
        (
            ["--tls-cert", files["cert"], "--tls-key", files["other_key"]],
            {},
            f"llmbrick: --tls-cert {files['cert']} and --tls-key {files['other_key']} are not "
            "a PEM certificate and its unencrypted private key (KEY_VALUES_MISMATCH)",
        ),
        (
            ["--tls-cert", files["cert"], "--tls-key", files["key"], "--tls-client-ca", junk],
            {},
            f"llmbrick: --tls-client-ca {junk}: not a PEM CA certificate (",
        ),
        (
            ["--api-keys-file", str(bad_keys)],
            {},
            f"llmbrick: --api-keys-file {bad_keys}: API keys line 2: unknown option 'colour'",
        ),
        (
            ["--api-keys-file", missing],
            {},
            f"llmbrick: cannot read the API keys file {missing}: No such file or directory",
        ),
        ([], {"LLMBRICK_API_KEYS": " , "}, "llmbrick: LLMBRICK_API_KEYS: ApiKeyAuth needs"),
        (
            ["--api-keys-file", str(bad_keys)],
            {"LLMBRICK_API_KEYS": "k-1"},
            "llmbrick: both --api-keys-file (or LLMBRICK_API_KEYS_FILE) and LLMBRICK_API_KEYS",
        ),
        (
            [f"{authenticated}:runtime"],
            {"LLMBRICK_API_KEYS": "k-1"},
            "llmbrick: the app's runtime has its own authenticator: drop --api-keys-file and "
            "LLMBRICK_API_KEYS, or the app's authenticator",
        ),
        (
            ["--cors-origin", "app.example.com"],
            {},
            "llmbrick: --cors-origin: a CORS origin is scheme://host[:port], like "
            "https://app.example.com; got 'app.example.com'",
        ),
        (
            ["--allowed-host", "a*b"],
            {},
            "llmbrick: --allowed-host: an allowed host is a name, '*.domain' or '*'; got 'a*b'",
        ),
        (
            ["--store", "disk"],
            {},
            "llmbrick serve: --store: choose memory (memory?keep_for=SECONDS&...), none or "
            "redis://HOST:PORT/DB; got 'disk' (see llmbrick serve --help)",
        ),
        (
            ["--store", "memory?keep=60"],
            {},
            "llmbrick serve: --store: the memory store has no setting 'keep'; it takes "
            "keep_for, max_events, max_bytes, max_total_bytes, window (see llmbrick serve --help)",
        ),
        (
            ["--workers", "0"],
            {},
            "llmbrick serve: --workers: '0' is not a number of workers (1 or more) or auto",
        ),
        (
            ["--rate-per-key", "0"],
            {},
            "llmbrick serve: --rate-per-key: '0' is not a positive number of streams per second",
        ),
    ]
    for args, env, expected in cases:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            try:
                code = main(["serve", *args])
            except SystemExit as exit_:  # argparse's own exit
                code = int(exit_.code or 0)
        line = one_line(capsys)
        assert code == 2, (args, line)
        assert line.startswith(expected), (args, line)
        assert "k-secret" not in line  # a keys file's content is never shown


async def test_a_redis_store_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    # Without the plugin, the store cannot be built; with it, it cannot connect (nothing
    # listens on the port): either way one line that does not show the password.
    with closed_port() as held:
        url = f"redis://:hunter2@127.0.0.1:{held.getsockname()[1]}/0"
        code, out, err = await run("serve", "--store", url, env=FREE_PORTS)
    assert (code, out) == (2, ""), err
    (line,) = err.splitlines()
    assert line.startswith("llmbrick: ") and "store" in line and "hunter2" not in line
