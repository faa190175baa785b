"""What a hostile or careless client can do to the service, measured.

Three experiments on one TinyDB service each, printed as one table:

- memory: 60 x (a PUT of a 900 kB log line + a GET of that job), then the same
  job fed 16,000-character log lines (the longest a line may be) until the
  service refuses, each followed by a GET; the resident memory after each, and
  what the service answered;
- an archive bomb in the input directory (a 1.9 MB gzip `.tar` of 300,000
  members, and a plain `.tar` of 300,000 members): 8 concurrent listings, a
  DELETE of another archive and `/health/alive` probes while they run;
- SIGTERM while a listing inspects a large archive: how long the process takes to
  exit, against its `shutdown_timeout`.

    python bench/hostile.py --out bench/results-hostile.md
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import statistics
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import service_config  # noqa: E402
from service_process import ServiceProcess  # noqa: E402

DEADLINE = 300  # seconds any request may take before the run fails instead of hanging
TIMEOUT = aiohttp.ClientTimeout(total=DEADLINE)
LONGEST_LINE = 16_000
SHUTDOWN_TIMEOUT = 5.0


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory now and at its peak, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def storage(directory: Path) -> dict:
    return {"backend": "tinydb", "tinydb": {"path": str(directory / "data")}}


async def post_job(session: aiohttp.ClientSession, base: str, target: str) -> str:
    job = {"operation": "ADD", "target": target, "description": "hostile"}
    async with session.post(f"{base}/jobs", json={"jobs": [job]}) as response:
        return (await response.json())[0]["job_id"]


async def memory(work: Path) -> list[str]:
    service = ServiceProcess(work, service_config(storage(work), work / "input"))
    await service.start(timeout=DEADLINE)
    rows = []
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            job_id = await post_job(session, service.url, "MEMORY_DATASET")
            url = f"{service.url}/jobs/{job_id}"

            async def put_and_get(line: str) -> int:
                async with session.put(url, json={"status": "validating", "log": line}) as response:
                    await response.read()
                async with session.get(url) as got:
                    await got.read()
                    assert got.status == 200, got.status
                return response.status

            answers = Counter([await put_and_get("x" * 900_000) for _ in range(60)])
            now, peak = rss_mb(service.pid)
            rows.append(f"| 60 x (PUT of a 900 kB log line + GET) | {dict(answers)} | RSS {now:.0f} MB | {peak:.0f} |")
            answers = Counter()
            while not answers.keys() - {200} and sum(answers.values()) < 1_000:
                answers[await put_and_get("y" * LONGEST_LINE)] += 1
            now, peak = rss_mb(service.pid)
            rows.append(
                f"| PUTs of {LONGEST_LINE:,}-character lines (+ GET each) until refused | {dict(answers)} "
                f"| RSS {now:.0f} MB | {peak:.0f} |"
            )
    finally:
        service.stop(timeout=DEADLINE)
    return rows


def many_members(path: Path, members: int, compress: bool) -> None:
    """A `.tar` of `members` empty files; gzip-compressed when asked."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for number in range(members):
            archive.addfile(tarfile.TarInfo(f"m/{number}"))
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=9) if compress else raw.getvalue())


def small_archive(path: Path) -> None:
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo(f"{path.stem}.json")
        archive.addfile(info)


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    start = time.perf_counter()
    async with session.get(url) as response:
        await response.read()
        return time.perf_counter() - start, response.status


async def probe_alive(session: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> list[float]:
    latencies = []
    while not stop.is_set():
        seconds, status = await timed_get(session, url)
        assert status == 200, status
        latencies.append(seconds * 1000)
        await asyncio.sleep(0.01)
    return latencies


async def bomb(work: Path) -> list[str]:
    input_dir = work / "input"
    input_dir.mkdir()
    many_members(input_dir / "GZIP_BOMB.tar", 300_000, compress=True)
    many_members(input_dir / "MANY_MEMBERS.tar", 300_000, compress=False)
    small_archive(input_dir / "TO_DELETE.tar")
    sizes = {path.name: path.stat().st_size / 1e6 for path in input_dir.iterdir()}
    service = ServiceProcess(work, service_config(storage(work), input_dir))
    await service.start(timeout=DEADLINE)
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            stop = asyncio.Event()
            probes = asyncio.create_task(probe_alive(session, f"{service.url}/health/alive", stop))
            start = time.perf_counter()
            listings = [asyncio.create_task(timed_get(session, f"{service.url}/importable-datasets")) for _ in range(8)]
            await asyncio.sleep(0.05)
            delete_start = time.perf_counter()
            async with session.delete(f"{service.url}/importable-datasets/TO_DELETE") as deleted:
                delete_ms = (time.perf_counter() - delete_start) * 1000
                delete_status = deleted.status
            answered = await asyncio.gather(*listings)
            stop.set()
            alive = sorted(await probes)
    finally:
        service.stop(timeout=DEADLINE)
    ends = sorted(seconds for seconds, _ in answered)
    statuses = Counter(status for _, status in answered)
    p99 = alive[min(len(alive) - 1, int(len(alive) * 0.99))]
    files = ", ".join(f"{name} {size:.1f} MB" for name, size in sorted(sizes.items()))
    return [
        f"| archive bomb ({files}): 8 concurrent listings, first / last answer s | {dict(statuses)} "
        f"| {ends[0]:.2f} / {ends[-1]:.2f} | |",
        f"| DELETE of another archive meanwhile, ms | {delete_status} | {delete_ms:.1f} | |",
        f"| /health/alive meanwhile ({len(alive)} probes), median / p99 ms | 200 "
        f"| {statistics.median(alive):.1f} / {p99:.1f} | |",
        f"| (since the start of the listings) | | {time.perf_counter() - start:.2f} s | |",
    ]


async def sigterm(work: Path) -> list[str]:
    input_dir = work / "input"
    input_dir.mkdir()
    for number in range(20):
        many_members(input_dir / f"LARGE_{number:02d}.tar", 20_000, compress=False)
    config = service_config(storage(work), input_dir, server={"shutdown_timeout": SHUTDOWN_TIMEOUT})
    service = ServiceProcess(work, config)
    await service.start(timeout=DEADLINE)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        listing = asyncio.create_task(timed_get(session, f"{service.url}/importable-datasets"))
        await asyncio.sleep(0.3)
        start = time.perf_counter()
        code = await asyncio.to_thread(service.stop, timeout=DEADLINE)
        took = time.perf_counter() - start
        listing.cancel()
    return [f"| SIGTERM with 20 archives of 20,000 members being read | exit {code} | {took:.2f} s | |"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-hostile.md")
    args = parser.parse_args()
    rows = ["| experiment | answers | measured | peak RSS MB |", "|---|---|---|---|"]
    for experiment in (memory, bomb, sigterm):
        with tempfile.TemporaryDirectory() as work:
            rows += await experiment(Path(work))
    table = "\n".join(
        [f"TinyDB service, 2 cores, shutdown_timeout {SHUTDOWN_TIMEOUT:g} s in the SIGTERM row.", "", *rows]
    )
    print(table)
    args.out.write_text(table + "\n")


if __name__ == "__main__":
    asyncio.run(main())
