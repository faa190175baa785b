"""The MongoDB batch benchmark: a POST of 1,000 jobs against one `insert_many` of 1,000 documents.

It starts a SecantusDB (as the tests start it; or uses the server MONGODB_URL names) and a
service on a database of its own, then in one run, alternating:
- POSTs of 1,000 new jobs on fresh targets over HTTP, timed from request to answer;
- `insert_many` of 1,000 documents of the same size into a scratch collection of the
  same server, through a plain driver client: the floor any batch of writes has here.
The last line is the ratio of their medians; the service should stay within 10x.
Then, once, what a start costs with the jobs of all rounds queued: a store opened on the
database and prepared (its repair reads the targets of every new job, which keeps its mark).

    SECANTUSD=/work/venv-secantus/bin/secantusd-py python bench/mongo_posts.py --rounds 3

Prints a markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import service_config  # noqa: E402
from mongo_server import MongoServer, secantusd  # noqa: E402
from pymongo import MongoClient  # noqa: E402
from service_process import ServiceProcess  # noqa: E402

from backends.mongo import MongoStore  # noqa: E402

BATCH = 1000
USER = {"userId": "8a1f2c3d-0000-4000-8000-000000000001", "firstName": "Ola", "lastName": "Nordmann"}
TIMEOUT = aiohttp.ClientTimeout(total=300)


def entries(round_number: int) -> list[dict[str, Any]]:
    prefix = f"BULK_{round_number}_{uuid.uuid4().hex[:6].upper()}"
    return [{"operation": "ADD", "target": f"{prefix}_{n:04d}"} for n in range(BATCH)]


def documents(round_number: int) -> list[dict[str, Any]]:
    """Job-sized documents, as the service would store them."""
    return [
        {
            "jobId": str(uuid.uuid4()),
            "datastoreRdn": "local",
            "status": "queued",
            "parameters": entry,
            "log": [],
            "createdAt": "2026-01-01T00:00:00.000000+00:00",
            "createdBy": USER,
        }
        for entry in entries(round_number)
    ]


async def post(session: aiohttp.ClientSession, base: str, round_number: int) -> float:
    body = {"jobs": entries(round_number)}
    start = time.perf_counter()
    async with session.post(f"{base}/jobs", json=body) as response:
        results = await response.json()
    seconds = time.perf_counter() - start
    assert response.status == 200 and all(result["msg"] == "CREATED" for result in results), results[:3]
    return seconds


def insert_many(client: MongoClient[dict[str, Any]], database: str, round_number: int) -> float:
    batch = documents(round_number)
    start = time.perf_counter()
    client[database]["scratch"].insert_many(batch, ordered=False)
    return time.perf_counter() - start


async def start(url: str, database: str) -> float:
    """A store opened on `database` and prepared, as at a service's start."""
    began = time.perf_counter()
    store = await MongoStore.open(url, database, 120, default_datastore="local")
    try:
        await store.ping()
        return time.perf_counter() - began
    finally:
        await store.close()


async def measure(url: str, rounds: int) -> tuple[list[float], list[float], float]:
    database = f"bench_{uuid.uuid4().hex[:12]}"
    storage = {"backend": "mongodb", "mongodb": {"url": url, "database": database, "timeout_seconds": 60}}
    posts, inserts = [], []
    client: MongoClient[dict[str, Any]] = MongoClient(url)
    with tempfile.TemporaryDirectory(prefix="job-service-mongo-posts-") as tmp, client:
        service = ServiceProcess(Path(tmp), service_config(storage, Path(tmp) / "input"))
        await service.start(timeout=120)
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                for round_number in range(rounds):
                    inserts.append(await asyncio.to_thread(insert_many, client, database, round_number))
                    posts.append(await post(session, service.url, round_number))
            started = await start(url, database)
        finally:
            service.stop()
            client.drop_database(database)
    return posts, inserts, started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="POSTs and insert_many calls measured")
    parser.add_argument("--label", default="", help="what the run measures (a commit, 'before'), in its heading")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-mongodb-posts.md")
    args = parser.parse_args()
    server = None
    url = os.environ.get("MONGODB_URL")
    if url is None:
        command = secantusd()
        if command is None:
            sys.exit("bench/mongo_posts.py: set SECANTUSD (a secantusd-py) or MONGODB_URL")
        server = MongoServer(command)
        server.start()
        url = server.url
    try:
        posts, inserts, started = asyncio.run(measure(url, args.rounds))
    finally:
        if server is not None:
            server.stop()
    ratio = statistics.median(posts) / statistics.median(inserts)
    lines = [
        f"MongoDB{' ' + args.label if args.label else ''}: {'SecantusDB' if server else url}, loopback,"
        f" {args.rounds} rounds of each, alternating.",
        "",
        "| measure | median s | min s | max s |",
        "|---|---|---|---|",
    ]
    for name, values in [("POST of 1,000 jobs (HTTP)", posts), ("insert_many of 1,000 documents", inserts)]:
        lines.append(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    lines += [
        "",
        f"POST over insert_many, medians: {ratio:.1f}x (at most 10x).",
        f"A start with the {args.rounds * BATCH:,} jobs queued (the store opened and prepared): {started:.3f} s.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.write_text(table)
    return 0 if ratio <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
