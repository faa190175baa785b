"""The write benchmark: what a change costs on TinyDB, at a small and a large store, in one run.

For each size (completed jobs, targets) it seeds a TinyDB store, starts the service
(fsync on, as always) and measures on loopback, one connection at a time:
- jobs' lives (a POST, a status PUT, the completing PUT), timing the completing PUT,
  which moves the job to the completed set and records its target in one write;
- a POST of 1,000 jobs in one request.
The last line compares the completing PUT's medians of the two sizes: the large
one must be within 1.5x of the small one.

    python bench/writes.py --sizes 1000:100,100000:10000

Prints a markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import DEFAULT_DATASTORE, service_config  # noqa: E402
from service_process import ServiceProcess  # noqa: E402

from backends.tinydb import TinyDBStore  # noqa: E402

USER = {"userId": "8a1f2c3d-0000-4000-8000-000000000001", "firstName": "Ola", "lastName": "Nordmann"}
STEPS = ["initiated", "validating", "decrypting", "transforming", "pseudonymizing", "enriching", "converting"]
TIMEOUT = aiohttp.ClientTimeout(total=120)


def completed_job(number: int, targets: int) -> dict[str, Any]:
    """A realistic finished job: 8 log lines, on one of the seeded targets."""
    at = (datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=number)).isoformat(timespec="microseconds")
    return {
        "jobId": str(uuid.uuid4()),
        "datastoreRdn": DEFAULT_DATASTORE,
        "status": "completed",
        "parameters": {"operation": "ADD", "target": f"DATASET_{number % targets:06d}", "description": "Monthly"},
        "log": [{"at": at, "message": f"Set status: {step}"} for step in [*STEPS, "completed"]],
        "createdAt": at,
        "createdBy": USER,
    }


def target(number: int) -> dict[str, Any]:
    return {
        "datastoreRdn": DEFAULT_DATASTORE,
        "name": f"DATASET_{number:06d}",
        "lastUpdatedAt": "2024-01-01T00:00:00.000000+00:00",
        "status": "completed",
        "lastUpdatedBy": USER,
        "action": ["ADD"],
    }


async def seed(path: Path, jobs: int, targets: int) -> None:
    store = await TinyDBStore.open(path, DEFAULT_DATASTORE)
    try:
        for start in range(0, jobs, 10_000):
            await store.load_collection(
                "completed", [completed_job(n, targets) for n in range(start, min(jobs, start + 10_000))]
            )
        await store.load_collection("targets", [target(n) for n in range(targets)])
    finally:
        await store.close()


async def lifecycles(base: str, count: int, targets: int) -> tuple[list[float], list[float]]:
    """`count` jobs posted, moved on and completed on the seeded targets: the completing PUTs'
    seconds, and those of a GET /health/alive after each (what any request costs here)."""
    seconds, floor = [], []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        names = random.sample(range(targets), min(targets, count))
        for number in range(count):
            body = {"jobs": [{"operation": "ADD", "target": f"DATASET_{names[number % len(names)]:06d}"}]}
            async with session.post(f"{base}/jobs", json=body) as response:
                [result] = await response.json()
                assert result["msg"] == "CREATED", result
            job = f"{base}/jobs/{result['job_id']}"
            async with session.put(job, json={"status": "validating", "log": "Checking the metadata"}) as response:
                assert response.status == 200, await response.text()
            start = time.perf_counter()
            async with session.put(job, json={"status": "completed", "log": "Imported"}) as response:
                await response.read()
                assert response.status == 200
            seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            async with session.get(f"{base}/health/alive") as response:
                await response.read()
            floor.append(time.perf_counter() - start)
    return seconds, floor


async def store_seconds(base: str, operation: str) -> tuple[float, float]:
    """The service's own count and sum of seconds of a store operation, from /metrics."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(f"{base}/metrics") as response:
        text = await response.text()
    found = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        for kind in found:
            if line.startswith(f'store_operation_duration_seconds_{kind}{{operation="{operation}"}}'):
                found[kind] = float(line.split()[-1])
    return found["count"], found["sum"]


async def big_posts(base: str, count: int) -> list[float]:
    """`count` POSTs of 1,000 new jobs each: their seconds."""
    seconds = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for round_number in range(count):
            prefix = f"BULK_{round_number}_{uuid.uuid4().hex[:6].upper()}"
            body = {"jobs": [{"operation": "ADD", "target": f"{prefix}_{n:04d}"} for n in range(1000)]}
            start = time.perf_counter()
            async with session.post(f"{base}/jobs", json=body) as response:
                results = await response.json()
            seconds.append(time.perf_counter() - start)
            assert response.status == 200 and all(result["msg"] == "CREATED" for result in results)
    return seconds


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def measure(jobs: int, targets: int, count: int, posts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="job-service-writes-") as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        await seed(data, jobs, targets)
        seeded = time.perf_counter() - started
        service = ServiceProcess(Path(tmp), service_config({"tinydb": {"path": str(data)}}, Path(tmp) / "input"))
        startup = await service.start(timeout=300)
        try:
            await lifecycles(service.url, 20, targets)  # warm up
            before = await store_seconds(service.url, "update_job")
            puts, floor = await lifecycles(service.url, count, targets)
            after = await store_seconds(service.url, "update_job")
            bulk = await big_posts(service.url, posts)
        finally:
            service.stop()
    store_mean = (after[1] - before[1]) / (after[0] - before[0])
    return {
        "jobs": jobs,
        "targets": targets,
        "puts": puts,
        "floor": floor,
        "store": store_mean,
        "bulk": bulk,
        "seeded": seeded,
        "startup": startup,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000:100,100000:10000", help="completed jobs:targets, comma separated")
    parser.add_argument("--lifecycles", type=int, default=1000, help="completing PUTs measured per size")
    parser.add_argument("--posts", type=int, default=3, help="POSTs of 1,000 jobs measured per size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-writes.md")
    args = parser.parse_args()
    sizes = [tuple(int(part) for part in size.split(":")) for size in args.sizes.split(",")]

    results = [await measure(jobs, targets, args.lifecycles, args.posts) for jobs, targets in sizes]
    lines = [
        "Backend: tinydb (fsync on); loopback, one connection; "
        f"{args.lifecycles} completing PUTs and {args.posts} POSTs of 1,000 jobs per size.",
        "",
        "| measure | completed jobs | targets | median ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        size = f"{result['jobs']:,} | {result['targets']:,}"
        measured = [
            ("the completing PUT", result["puts"]),
            ("GET /health/alive between them (any request's floor)", result["floor"]),
            ("POST of 1,000 jobs", result["bulk"]),
        ]
        for name, values in measured:
            ms = [value * 1000 for value in values]
            lines.append(
                f"| {name} | {size} | {statistics.median(ms):.2f} | {percentile(ms, 0.9):.2f} "
                f"| {percentile(ms, 0.99):.2f} | {max(ms):.2f} |"
            )
        lines.append(
            f"| store's update_job in the service, mean (/metrics) | {size} | {result['store'] * 1000:.2f} | | | |"
        )
        lines.append(f"| seeded in {result['seeded']:.1f} s; start-up {result['startup']:.2f} s | {size} | | | | |")
    medians = [statistics.median(result["puts"]) for result in results]
    ratio = medians[-1] / medians[0]
    lines += ["", f"Completing PUT, largest store over smallest: {ratio:.2f}x (at most 1.5x)."]
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.write_text(table)
    slowest_post = max(max(result["bulk"]) for result in results)
    return 0 if ratio <= 1.5 and max(medians) <= 0.003 and slowest_post <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
