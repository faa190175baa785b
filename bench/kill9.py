"""Kill the service with SIGKILL at random moments while clients post and complete jobs.

Each round starts `job-service` on one data directory (kept across rounds), lets a few
clients post new jobs and complete earlier ones, and kills the process at a random instant
with writes in flight. The next round's start must open the store, and every job and every
completion that got a 200 before the kill must be there, each job exactly once.

    python bench/kill9.py --rounds 50

Prints a table and exits 1 if anything acknowledged was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import service_config
from service_process import ServiceProcess

TIMEOUT = aiohttp.ClientTimeout(total=30)  # a request the killed service never answers fails, not hangs


@dataclass
class Acknowledged:
    created: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)


async def client(base: str, acked: Acknowledged, name: str) -> None:
    """Post jobs and complete them, recording only what was answered with a 200."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        n = 0
        while True:
            n += 1
            target = f"{name}_{n}"
            body = {"jobs": [{"operation": "ADD", "target": target}]}
            async with session.post(f"{base}/jobs", json=body) as response:
                [result] = await response.json()
                assert response.status == 200 and result["msg"] == "CREATED", result
                job_id = result["job_id"]
            acked.created.add(job_id)
            for status in ("validating", "completed"):
                async with session.put(f"{base}/jobs/{job_id}", json={"status": status}) as response:
                    assert response.status == 200, await response.text()
            acked.completed.add(job_id)


async def run_round(service: ServiceProcess, acked: Acknowledged, number: int) -> dict[str, float]:
    startup = await service.start()
    try:
        lost = await check(service.url, acked)
        clients = [asyncio.ensure_future(client(service.url, acked, f"R{number}_C{c}")) for c in range(4)]
        await asyncio.sleep(random.uniform(0.05, 1.0))
    finally:
        service.stop(signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), 60)
    # The kill ends every client with a connection error; anything else is a wrong answer.
    unexpected = [r for r in results if not isinstance(r, aiohttp.ClientError)]
    if unexpected:
        raise RuntimeError(f"a client got a wrong answer: {unexpected!r}")
    return {"startup": startup, "lost": lost}


async def check(base: str, acked: Acknowledged) -> int:
    """How many acknowledged writes are missing; also fails on a job listed twice."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(f"{base}/jobs") as response:
        jobs = await response.json()
    ids = [job["jobId"] for job in jobs]
    if len(ids) != len(set(ids)):
        raise RuntimeError("a job is listed twice")
    status = {job["jobId"]: job["status"] for job in jobs}
    missing = acked.created - status.keys()
    not_completed = {job_id for job_id in acked.completed if status.get(job_id) != "completed"}
    return len(missing) + len(not_completed - missing)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        storage = {"tinydb": {"path": f"{tmp}/data"}}
        service = ServiceProcess(Path(tmp), service_config(storage, Path(tmp) / "input"))
        acked = Acknowledged()
        rounds = [await run_round(service, acked, n) for n in range(args.rounds)]
        await service.start()
        try:
            lost = await check(service.url, acked)
        finally:
            service.stop(signal.SIGKILL)

    lost_total = sum(r["lost"] for r in rounds) + lost
    startups = sorted(r["startup"] for r in rounds)
    print("| kill -9 rounds | store opened | jobs acknowledged | completions acknowledged | lost | start-up median |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.rounds} | {args.rounds + 1}/{args.rounds + 1} | {len(acked.created)} | {len(acked.completed)} "
        f"| {lost_total} | {startups[len(startups) // 2] * 1000:.0f} ms |"
    )
    return 1 if lost_total else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
