"""A smoke run of the benchmark: it runs end to end and prints its table (the numbers are not judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "bench" / "run.py"


def test_the_benchmark_runs_and_prints_its_table(tmp_path):
    out = tmp_path / "results.md"
    result = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--sizes", "200", "--seconds", "1", "--lifecycles", "3"),
            *("--datastores", "3", "--rounds", "1", "--provisionings", "2", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert table in result.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| measure")]
    names = {line.split(" | ")[0].removeprefix("| ") for line in rows}
    assert {"executor poll", "GET /jobs/{id}", "lifecycle: the completing PUT"} <= names
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in rows]
    ceilings = [row for row in cells if row[0].startswith("bare aiohttp (the ceiling), the median of ")]
    assert [row[2] for row in ceilings] == ["1", "16"]
    # Every throughput is a ratio to the ceiling measured beside it.
    assert all(row[4].endswith("%") for row in cells if row[0] == "executor poll")
    assert any(line.startswith("| start-up") for line in rows)
    polls = {name for name in names if name.startswith("2026 executor poll: ")}
    assert len(polls) == 3
    # The datastores case: the same polls and the job by id, each with its ratio to one datastore's figure.
    case = [line.removeprefix("| 3 datastores: ") for line in rows if line.startswith("| 3 datastores: ")]
    compared = [line for line in case if not line.startswith(("POST /datastores", "start-up"))]
    assert {line.split(" | ")[0] for line in compared} == {*polls, "GET /jobs/{id}"}
    assert all(line.removesuffix(" |").endswith("%") for line in compared)
    assert any(line.startswith("POST /datastores, 2 provisionings") for line in case)
    assert any(line.startswith("start-up") for line in case)
