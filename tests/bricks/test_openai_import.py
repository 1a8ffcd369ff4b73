"""The ``openai`` SDK is optional: the core never imports it, and its absence is one clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python(code: str) -> str:
    """Run ``code`` in a fresh interpreter, so no other test's imports count."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return done.stdout.strip()


def test_importing_llmbrick_and_the_brick_module_loads_no_sdk() -> None:
    code = (
        "import sys, llmbrick, llmbrick.bricks, llmbrick.bricks.openai; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('openai', 'httpx2')))"
    )
    assert python(code) == "[]"


def test_no_module_of_the_core_imports_the_sdk_at_top_level() -> None:
    for path in (ROOT / "llmbrick").rglob("*.py"):
        for line in path.read_text().splitlines():
            assert not line.startswith(("import openai", "from openai")), f"{path}: {line}"


def test_building_the_brick_without_the_sdk_names_the_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['openai'] = None  # import fails as if the package were not installed\n"
        "from llmbrick.bricks.openai import OpenAILLM\n"
        "try:\n"
        "    OpenAILLM('gpt-4o-mini', api_key='k')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert python(code) == (
        "OpenAILLM needs the 'openai' extra (openai is missing): pip install 'llmbrick[openai]'"
    )
