"""SIGKILL at random moments loses no acknowledged write and leaves no target out of step
with its jobs (bench/kill9.py, a few rounds, with BUMPs of large manifestos and multi-entry POSTs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "bench" / "kill9.py"


def test_kill_9_never_loses_an_acknowledged_job_nor_leaves_a_target_out_of_step():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "4", "--datasets", "1000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    row = [cell.strip() for cell in result.stdout.strip().splitlines()[-1].split("|")]
    opened, created, completed, _, targets, lost, inconsistent = row[2:9]
    assert opened == "5/5" and lost == "0" and inconsistent == "0"
    assert int(created) > 0 and int(completed) > 0 and int(targets) > 0, (
        "the clients must have been acknowledged something"
    )
