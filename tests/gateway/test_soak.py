"""The soak command (``python -m benchmarks.soak``) runs end to end with tiny numbers.

Not the soak itself (ten minutes, not in CI): a smoke test that the command starts its
gateway, runs streams of every kind over every transport, checks the server's counters
and exits 0 with its report. Nothing here depends on how fast the machine is: the only
bound is a generous one on the whole command, and the RSS check, which needs a warmed-up
store, is turned off explicitly (the report must then say it was not applied).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.gateway.cli_support import ROOT

#: A bound on the whole run (it takes about 15 s), only so that a hang cannot stall the suite.
#: 30 streams make 10 per transport, so the first of each slot already has a disconnecting
#: one (every 10th from the 4th) and a resuming one (from the 8th) on every transport.
LIMIT = 180.0


async def test_a_tiny_soak_passes_and_reports_its_checks(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "benchmarks.soak", "--minutes", "0.06", "--streams", "30"),
        *("--min-seconds", "1", "--max-seconds", "2", "--ramp", "1", "--sample", "1"),
        *("--warmup", "1", "--warmup-max", "1", "--no-rss-check", "--quiet", "--seed", "7"),
        *("--out", str(out), "--gateway-log", str(tmp_path / "gateway.log")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), LIMIT)
    printed = stdout.decode()
    assert process.returncode == 0, printed + stderr.decode()
    assert "PASSED" in printed
    report = json.loads(out.read_text())
    assert report["passed"] is True
    checks = {check["name"]: check for check in report["checks"]}
    for name in (
        "no failed stream",
        "every disconnected flow cancelled",
        "no flow leaked",
        "every resume complete",
        "fds idle: after = before",
        "tasks idle: after = before",
    ):
        assert checks[name]["applied"] and checks[name]["passed"], checks[name]
    rss = checks["RSS"]
    assert not rss["applied"] and "not applied" in rss["detail"]
    assert "n/a  RSS: not applied" in printed
    streams = report["streams"]
    assert streams["failed"] == 0 and streams["started"] >= 30
    assert streams["disconnects"] > 0 and streams["resumes_ok"] == streams["resumes"] > 0
    kinds = streams["by_transport_and_kind"]
    assert {key.split("/")[0] for key in kinds} == {"sse", "ws", "grpc"}
    cancelled = report["server_flows"]["soak_cancel"]["cancelled"]
    assert cancelled == streams["disconnects"]
