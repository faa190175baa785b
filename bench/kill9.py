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
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp


@dataclass
class Acknowledged:
    created: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_until_ready(base: str, process: subprocess.Popen, timeout: float = 30) -> float:
    """Seconds until /health/ready answered 200."""
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - start < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited with {process.returncode} at start")
            try:
                async with session.get(f"{base}/health/ready") as response:
                    if response.status == 200:
                        return time.monotonic() - start
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError("the service did not become ready")


async def client(base: str, acked: Acknowledged, name: str) -> None:
    """Post jobs and complete them, recording only what was answered with a 200."""
    async with aiohttp.ClientSession() as session:
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


async def run_round(command: list[str], base: str, acked: Acknowledged, number: int) -> dict[str, float]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        startup = await wait_until_ready(base, process)
        lost = await check(base, acked)
        clients = [asyncio.ensure_future(client(base, acked, f"R{number}_C{c}")) for c in range(4)]
        await asyncio.sleep(random.uniform(0.05, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        results = await asyncio.gather(*clients, return_exceptions=True)
        # The kill ends every client with a connection error; anything else is a wrong answer.
        unexpected = [r for r in results if not isinstance(r, aiohttp.ClientError)]
        if unexpected:
            raise RuntimeError(f"a client got a wrong answer: {unexpected!r}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return {"startup": startup, "lost": lost}


async def check(base: str, acked: Acknowledged) -> int:
    """How many acknowledged writes are missing; also fails on a job listed twice."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/jobs") as response:
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
        port = free_port()
        config = Path(tmp) / "config.toml"
        config.write_text(
            f'[server]\nport = {port}\n[storage.tinydb]\npath = "{tmp}/data"\n[input]\ndir = "{tmp}/input"\n'
        )
        command = [sys.executable, "-m", "job_service", "--config", str(config)]
        base = f"http://127.0.0.1:{port}"
        acked = Acknowledged()
        rounds = [await run_round(command, base, acked, n) for n in range(args.rounds)]
        final = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_until_ready(base, final)
            lost = await check(base, acked)
        finally:
            final.kill()
            final.wait()

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
