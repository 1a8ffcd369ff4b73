"""Regenerate the gRPC adapter's Python code from ``protos/``; ``--check`` fails on drift.

Usage::

    python scripts/gen_protos.py          # rewrite adapters/llmbrick_grpc/_generated/
    python scripts/gen_protos.py --check  # exit 1 if the committed code differs

It runs grpcio-tools' bundled ``protoc`` with the ``python``, ``grpc_python``
and mypy-protobuf (``mypy``, ``mypy_grpc``) generators. ``protoc`` writes
``from llmbrick.v1 import event_pb2``, which would import from the core
package ``llmbrick``; the script flattens the output into one package and
rewrites those imports to relative ones, so the generated code lives only
in ``llmbrick_grpc._generated``.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["generate", "main"]

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE_DIR = PROTOS / "llmbrick" / "v1"
TARGET = ROOT / "adapters" / "llmbrick_grpc" / "_generated"
PROTO_PACKAGE = "llmbrick.v1"
PYTHON_PACKAGE = "llmbrick_grpc._generated"

_INIT = '"""Code generated from protos/llmbrick/v1 by scripts/gen_protos.py; do not edit."""\n'
_IMPORT = re.compile(r"^from llmbrick\.v1 import (\w+)", re.MULTILINE)
_MODULE_NAME = re.compile(r"'llmbrick\.v1\.(\w+_pb2)'")
_LEFTOVER = re.compile(r"^\s*(?:from|import)\s+llmbrick\b", re.MULTILINE)


def _plugin(name: str) -> str:
    # The plugins sit next to the interpreter in a virtualenv; fall back to PATH.
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install mypy-protobuf")
    return found


def _run_protoc(out: Path) -> None:
    # Imported here so --help works without grpcio-tools.
    from grpc_tools import protoc  # type: ignore[import-untyped]

    include = Path(protoc.__file__).resolve().parent / "_proto"
    protos = sorted(str(p.relative_to(PROTOS)) for p in PACKAGE_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files in {PACKAGE_DIR}")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        *protos,
    ]
    # protoc runs in a subprocess so its chatter ("Writing mypy to ...") stays quiet.
    code = f"import sys; from grpc_tools import protoc; sys.exit(protoc.main({args!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"protoc failed:\n{done.stderr}{done.stdout}")


def _rewrite(text: str) -> str:
    text = _IMPORT.sub(r"from . import \1", text)
    text = _MODULE_NAME.sub(rf"'{PYTHON_PACKAGE}.\1'", text)
    leftover = _LEFTOVER.search(text)
    if leftover:
        raise SystemExit(f"generated code still imports the core package: {leftover.group()!r}")
    return text


def generate(target: Path) -> list[str]:
    """Generate the flattened, import-rewritten package into ``target`` (emptied first).

    Returns:
        The names of the files written, sorted.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _run_protoc(out)
        generated = out / "llmbrick" / "v1"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        (target / "__init__.py").write_text(_INIT)
        names = ["__init__.py"]
        for path in sorted(generated.iterdir()):
            text = path.read_text()
            # A proto without services still gets an empty *_pb2_grpc module: skip it.
            if path.name.endswith(("_pb2_grpc.py", "_pb2_grpc.pyi")) and "class " not in text:
                continue
            (target / path.name).write_text(_rewrite(text))
            names.append(path.name)
    return sorted(names)


def _check(target: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "_generated"
        generate(fresh)
        want = {p.name: p.read_text() for p in fresh.iterdir() if p.is_file()}
        have = (
            {p.name: p.read_text() for p in target.iterdir() if p.is_file()}
            if target.is_dir()
            else {}
        )
    problems: list[str] = []
    for name in sorted(want.keys() | have.keys()):
        if name not in have:
            problems.append(f"missing: {name}")
        elif name not in want:
            problems.append(f"not generated from protos/ (stale): {name}")
        elif want[name] != have[name]:
            diff = difflib.unified_diff(
                have[name].splitlines(), want[name].splitlines(), "committed", "generated", n=1
            )
            problems.append(f"differs: {name}\n" + "\n".join(list(diff)[:40]))
    if problems:
        print(f"{_shown(target)} is out of date with protos/:", file=sys.stderr)
        for problem in problems:
            print("  " + problem, file=sys.stderr)
        print("run: python scripts/gen_protos.py", file=sys.stderr)
        return 1
    print(f"{_shown(target)} matches protos/ ({len(want)} files)")
    return 0


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and fail if the committed code differs",
    )
    parser.add_argument(
        "--target",
        type=Path,
        default=TARGET,
        help="the generated package's directory (default: %(default)s)",
    )
    options = parser.parse_args(argv)
    target = options.target.resolve()
    if options.check:
        return _check(target)
    names = generate(target)
    print(f"wrote {len(names)} files to {_shown(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
