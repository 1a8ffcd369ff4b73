"""The committed generated code matches protos/ and never touches the core package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_protos.py"
GENERATED = ROOT / "adapters" / "llmbrick_grpc" / "_generated"


def check(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--target", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_committed_code_matches_the_protos() -> None:
    done = check(GENERATED)
    assert done.returncode == 0, done.stderr
    assert "matches protos/" in done.stdout


def test_drift_is_reported(tmp_path: Path) -> None:
    copy = tmp_path / "_generated"
    shutil.copytree(GENERATED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "flow_pb2.py").write_text((copy / "flow_pb2.py").read_text() + "# edited\n")
    (copy / "stale_pb2.py").write_text("")
    (copy / "event_pb2.pyi").unlink()
    done = check(copy)
    assert done.returncode == 1
    assert "differs: flow_pb2.py" in done.stderr
    assert "stale" in done.stderr and "missing: event_pb2.pyi" in done.stderr


def test_generated_code_imports_only_itself() -> None:
    files = sorted(GENERATED.glob("*.py*"))
    assert {f.name for f in files} >= {"flow_pb2.py", "flow_pb2_grpc.pyi", "brick_pb2_grpc.py"}
    for path in files:
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+llmbrick\b", text, re.MULTILINE), path.name
        assert "'llmbrick.v1." not in text.replace("'llmbrick.v1.FlowService'", "").replace(
            "'llmbrick.v1.BrickService'", ""
        ), path.name


def test_messages_belong_to_the_adapter_package() -> None:
    from llmbrick_grpc.stubs import event_pb2, flow_pb2

    assert flow_pb2.StreamRequest.__module__ == "llmbrick_grpc._generated.flow_pb2"
    assert event_pb2.Event.DESCRIPTOR.full_name == "llmbrick.v1.Event"
    assert not any(name == "llmbrick.v1" or name.startswith("llmbrick.v1.") for name in sys.modules)
