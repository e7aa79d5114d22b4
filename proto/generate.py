"""Regenerate the betterproto2 code of the mesh protocol: ``just proto``.

    .venv/bin/python proto/generate.py

writes ``brio/_pb`` afresh from ``proto/brio/mesh/v1/mesh.proto`` (the old tree is deleted
first, so that removed messages disappear). ``generate(out_dir)`` is the same compiler run
into any directory; ``tests/mesh/test_proto_codegen.py`` uses it to check that the committed
code is current.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent
PACKAGE_DIR = ROOT / "brio" / "_pb"
PROTO_FILES = ("brio/mesh/v1/mesh.proto",)
OPTIONS = "client_generation=async,server_generation=async"


def generate(out_dir: Path) -> None:
    """Compile the protos into ``out_dir`` (which must exist) as an importable package."""
    # The compiler finds the protoc-gen-python_betterproto2 plugin on PATH: put this
    # interpreter's bin directory first (not resolved: a venv's python is a symlink).
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        str(PROTO_DIR),
        f"--python_betterproto2_out={out_dir}",
        f"--python_betterproto2_opt={OPTIONS}",
        *(str(PROTO_DIR / name) for name in PROTO_FILES),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"protoc failed (exit {result.returncode}): {' '.join(command)}\n"
            f"{result.stdout}{result.stderr}"
        )


def main() -> None:
    # Compile into a scratch directory first: a failed run leaves brio/_pb as it was.
    with tempfile.TemporaryDirectory(prefix="brio-proto-") as scratch:
        fresh = Path(scratch) / "_pb"
        fresh.mkdir()
        generate(fresh)
        shutil.rmtree(PACKAGE_DIR, ignore_errors=True)
        shutil.copytree(fresh, PACKAGE_DIR)
    print(f"regenerated {PACKAGE_DIR.relative_to(ROOT)} from {', '.join(PROTO_FILES)}")


if __name__ == "__main__":
    main()
