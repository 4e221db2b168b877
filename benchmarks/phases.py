"""Run one phase of a benchmark script in a child process and read that process's peak memory.

A benchmark that generates its data and then measures must not count the generation in the
measured peak: each phase runs as ``python SCRIPT --phase NAME ...`` in its own process, and
``os.wait4`` gives that child's own ``ru_maxrss``.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_phase(script: str, args: list[str], *, capture: bool = False) -> tuple[str, float]:
    """Run ``script`` with ``args``; return its stdout (when captured) and peak RSS in MiB."""
    proc = subprocess.Popen([sys.executable, script, *args], cwd=ROOT,
                            stdout=subprocess.PIPE if capture else None, text=True)
    output = proc.stdout.read() if capture else ""
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"phase {args[1] if len(args) > 1 else args} failed with exit code {code}")
    return output, usage.ru_maxrss / 1024  # Linux reports KiB
