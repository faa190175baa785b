"""SIGKILL at random moments loses no acknowledged write, leaves no target out of step
with its jobs, and leaves no provisioning unfinished nor any rdn blocked (bench/kill9.py, a
few rounds, with BUMPs of large manifestos, multi-entry POSTs and datastores provisioned)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "bench" / "kill9.py"


def test_kill_9_never_loses_an_acknowledged_job_nor_leaves_a_target_or_a_provisioning_out_of_step():
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
    provisioned, _, blocked, without_keys_job, unfinished = row[11:16]
    assert (blocked, without_keys_job, unfinished) == ("0", "0", "0")
    assert int(provisioned) > 0, "the provisioning client must have been acknowledged a datastore"
    assert int(created) > 0 and int(completed) > 0 and int(targets) > 0, (
        "the clients must have been acknowledged something"
    )
