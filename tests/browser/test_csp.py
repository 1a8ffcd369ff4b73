"""The playground's Content-Security-Policy, for whatever ``Host`` a request names."""

from __future__ import annotations

import pytest

from llmbrick_sse import playground_csp


@pytest.mark.parametrize(
    ("host", "connect"),
    [
        ("example.com", "'self' ws://example.com wss://example.com"),
        ("10.0.0.7:8000", "'self' ws://10.0.0.7:8000 wss://10.0.0.7:8000"),
        ("[::1]:8000", "'self' ws://[::1]:8000 wss://[::1]:8000"),
        # Not a host name: it adds nothing, so a request cannot write the policy.
        ("evil; script-src *", "'self'"),
        ("evil'*", "'self'"),
        (None, "'self'"),
    ],
)
def test_the_policy_connects_to_the_requested_host_only_when_it_is_one(
    host: str | None, connect: str
) -> None:
    directives = playground_csp(host).split("; ")
    assert f"connect-src {connect}" in directives
    assert "script-src 'self'" in directives
