#!/usr/bin/env python3
"""One entry point for a fresh clone: needs only Python 3.10+ and pip.

    python dev.py demo     run the demo (a worker, some tasks, a clean stop)
    python dev.py test     run the whole test suite
    python dev.py nox ...  run a nox session (lint, types, docs, bench...)

It installs uv into .dev/ if uv is not on PATH, then lets uv build the
project's environment (.venv) from the lock file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TOOLS = ROOT / ".dev"


def uv() -> str:
    found = shutil.which("uv")
    if found:
        return found
    exe = TOOLS / ("Scripts/uv.exe" if os.name == "nt" else "bin/uv")
    if not exe.exists():
        print("installing uv into .dev/ ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(TOOLS)
        python = TOOLS / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "uv>=0.5"], check=True)
    return str(exe)


def run(*args: str) -> int:
    return subprocess.run(list(args), cwd=ROOT).returncode


def sync() -> None:
    code = run(uv(), "sync", "--all-packages", "--frozen", "--quiet")
    if code:
        sys.exit(code)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    if command == "demo":
        sync()
        return run(uv(), "run", "--frozen", "python", "examples/demo/run.py")
    if command == "test":
        sync()
        code = run(uv(), "run", "--frozen", "pytest", "-n", "auto", *argv[1:])
        if code == 5:
            print("pytest collected no tests: that is a failure here", file=sys.stderr)
            return 1
        return code
    if command == "nox":
        sync()
        return run(uv(), "run", "--frozen", "nox", *argv[1:])
    print(__doc__)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
