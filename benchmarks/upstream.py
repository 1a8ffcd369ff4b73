"""The virtualenv holding upstream llmbrick 0.2.10, created on first use.

Upstream's wheel declares heavy dependencies its SSE server never imports
(chromadb, openai, grpcio-tools, sse-starlette, ...). Installing them would take
minutes and hundreds of MB, so the package is installed without them, followed by
what ``llmbrick.servers.sse.server`` does import: FastAPI, uvicorn[standard]
(uvloop, httptools), pydantic and pretty-loguru (its logger). The versions
installed are recorded with every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT

__all__ = ["UPSTREAM_VERSION", "VENV", "ensure_upstream", "upstream_python"]

UPSTREAM_VERSION = "0.2.10"
VENV = ROOT / "benchmarks" / ".venv-upstream"
_RUNTIME_DEPS = ("fastapi", "uvicorn[standard]", "pydantic", "pretty-loguru")
_REPORTED = ("llmbrick", "fastapi", "starlette", "uvicorn", "pydantic", "uvloop", "httptools")


def upstream_python() -> Path:
    """The interpreter of the upstream virtualenv."""
    return VENV / "bin" / "python"


def _installed(python: Path) -> dict[str, str]:
    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=VENV,
    )
    versions = {item["name"].lower(): item["version"] for item in json.loads(listing.stdout)}
    return {name: versions[name] for name in _REPORTED if name in versions}


def ensure_upstream() -> dict[str, str]:
    """Create the virtualenv if needed and return the versions of what matters in it.

    Raises:
        RuntimeError: the virtualenv could not be created or the install failed.
    """
    python = upstream_python()
    try:
        if python.exists() and _installed(python).get("llmbrick") == UPSTREAM_VERSION:
            return _installed(python)
        print(
            f"creating {VENV.relative_to(ROOT)} with llmbrick=={UPSTREAM_VERSION} ...", flush=True
        )
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--no-deps", f"llmbrick=={UPSTREAM_VERSION}"], check=True, cwd=VENV)
        subprocess.run([*pip, *_RUNTIME_DEPS], check=True, cwd=VENV)
        return _installed(python)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"cannot set up upstream llmbrick in {VENV}: {exc}") from exc
