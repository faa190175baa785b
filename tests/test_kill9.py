"""SIGKILL at random moments loses no acknowledged write (bench/kill9.py, a few rounds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "bench" / "kill9.py"


def test_kill_9_never_loses_an_acknowledged_job():
    result = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    row = result.stdout.strip().splitlines()[-1].split("|")
    assert row[2].strip() == "4/4" and row[5].strip() == "0"
    assert int(row[3]) > 0 and int(row[4]) > 0, "the clients must have been acknowledged something"
