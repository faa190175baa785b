"""The benchmark: job-service on a seeded store, beside a bare aiohttp endpoint.

For each history size it seeds a store with that many completed jobs and 50 in
progress, starts the service, and measures on loopback, at 1 and 16 connections:
the 2025 executor's poll, the 2026 executor's three polls, one job by id, the
targets, a filtered job list, the input directory with 1,000 archives; then a
job's whole life (a POST, 10 status PUTs and the completing PUT); start-up time
and memory. A bare aiohttp endpoint that returns a small JSON object, measured in
the same run, is the ceiling every throughput is also given as a ratio of. On a
shared machine the speed drifts within a run, and a ratio to a ceiling measured
minutes earlier says as much about the drift as about the service: so each
throughput is measured `--rounds` times, each time between two measurements of the
ceiling at the same connections, and every figure is the median of its rounds.

With `--datastores N` (N > 1) each size is seeded a second time, the same jobs,
targets and in-progress jobs spread over N datastores (the default one and N - 1
registered ones), and a second service is started beside the first. The three
polls and the job by id are then measured on the two services in turn, `--rounds`
times each, so that both see the same machine, and each figure of the N datastores is also a ratio of the single
datastore's; then the time `POST /datastores` takes to provision
`--provisionings` new datastores.

    python bench/run.py --backend tinydb --sizes 1000,10000,100000
    python bench/run.py --backend tinydb --sizes 100000 --datastores 10 --out bench/results-datastores.md
    SECANTUSD=.venv-secantus/bin/secantusd-py python bench/run.py --backend mongodb --sizes 1000,10000

Load comes from wrk when it is installed (Debian's `wrk`), else from an aiohttp
client loop. Prints one markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import re
import shutil
import statistics
import string
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import DEFAULT_DATASTORE, service_config, store_options  # noqa: E402
from mongo_server import MongoServer, free_port, secantusd  # noqa: E402
from service_process import ServiceProcess, stop_process, wait_ready  # noqa: E402

from backends import Datastore, open_store  # noqa: E402

OPERATIONS = ["ADD", "CHANGE", "PATCH_METADATA", "SET_STATUS", "REMOVE"]
STEPS = ["initiated", "validating", "decrypting", "transforming", "pseudonymizing", "enriching", "converting"]
DATASETS = [f"DATASET_{n:04d}" for n in range(500)]
DEADLINE = 120  # seconds a start-up, a request or a stop may take before the run fails instead of hanging
TIMEOUT = aiohttp.ClientTimeout(total=DEADLINE)
USER = {"userId": "8a1f2c3d-0000-4000-8000-000000000001", "firstName": "Ola", "lastName": "Nordmann"}
#: The 2026 executor's poll: three queries across every datastore, every few seconds.
POLLS = [
    "/jobs?status=built",
    "/jobs?status=queued&operation=SET_STATUS,BUMP,DELETE_DRAFT,REMOVE,ROLLBACK_REMOVE,DELETE_ARCHIVE,GENERATE_RSA_KEYS",
    "/jobs?status=queued&operation=PATCH_METADATA,ADD,CHANGE",
]
BY_ID = "GET /jobs/{id}"
BARE_APP = """
import sys
from aiohttp import web
async def hello(request): return web.json_response({"message": "I'm alive!"})
app = web.Application(); app.router.add_get("/", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def seeded_job(number: int, start: datetime, status: str, target: str) -> dict:
    """A realistic job: 8 log lines; one in 20 a BUMP with a manifesto of 20 updates."""
    created = start + timedelta(seconds=number)
    at = created.isoformat(timespec="microseconds")
    operation = random.choice(OPERATIONS)
    parameters: dict = {"operation": operation, "target": target, "description": "Monthly update of the dataset"}
    if operation == "SET_STATUS":
        parameters["releaseStatus"] = "PENDING_RELEASE"
    if number % 20 == 0:
        parameters = {
            "operation": "BUMP",
            "target": "DATASTORE",
            "description": "Release of the month",
            "bumpFromVersion": "1.0.0",
            "bumpToVersion": "1.1.0",
            "bumpManifesto": {
                "version": "1.1.0.0",
                "description": "Release of the month",
                "releaseTime": 1700000000 + number,
                "languageCode": "no",
                "updateType": "MINOR",
                "dataStructureUpdates": [
                    {"name": name, "description": "updated", "operation": "ADD", "releaseStatus": "PENDING_RELEASE"}
                    for name in random.sample(DATASETS, 20)
                ],
            },
        }
    log = [{"at": at, "message": f"Set status: {step}"} for step in [*STEPS, status]]
    return {
        "jobId": str(uuid.uuid4()),
        "status": status,
        "parameters": parameters,
        "log": log,
        "createdAt": at,
        "createdBy": USER,
    }


def completed_jobs(count: int, rdns: list[str]) -> Iterator[dict]:
    """`count` completed jobs, the n-th in `rdns[n % len(rdns)]`."""
    start = datetime(2020, 1, 1, tzinfo=UTC)
    for number in range(count):
        job = seeded_job(number, start, "failed" if number % 10 == 0 else "completed", random.choice(DATASETS))
        yield {**job, "datastoreRdn": rdns[number % len(rdns)]}


def letters(number: int) -> str:
    """0 -> "a", 25 -> "z", 26 -> "ba": a part of an rdn, which is lower-case letters."""
    digits = ""
    while True:
        number, digit = divmod(number, 26)
        digits = string.ascii_lowercase[digit] + digits
        if not number:
            return digits


def registered_datastores(root: Path, count: int) -> list[Datastore]:
    """`count` datastores besides the default, as provisioning registers them, under `root`."""
    datastores = []
    for number in range(count):
        rdn = f"bench.seeded.{letters(number)}"
        directory = root.resolve() / rdn
        for made in (directory, directory.with_name(f"{rdn}_input")):
            made.mkdir(parents=True)
        datastores.append(
            Datastore(
                rdn=rdn,
                name=f"Seeded {letters(number)}",
                description="Seeded by the benchmark",
                directory=str(directory),
                bumpEnabled=False,
                deleted=False,
            )
        )
    return datastores


async def seed(storage: dict, size: int, datastores: list[Datastore] | None = None) -> str:
    """Fill a store (a `[storage]` section); the id of its oldest completed job.

    With `datastores` (registered here), the jobs and targets are spread over them and
    the default datastore in turn; the documents are otherwise those of a seed without."""
    random.seed(size)  # the same jobs, whichever datastores they are spread over
    store = await open_store(store_options(storage), DEFAULT_DATASTORE)
    for datastore in datastores or []:
        await store.add_datastore(datastore)
    # The default last: the oldest job, the one fetched by id, is in another datastore when there are others.
    rdns = [*(datastore["rdn"] for datastore in datastores or []), DEFAULT_DATASTORE]
    oldest = None
    batch: list[dict] = []
    for job in completed_jobs(size, rdns):
        oldest = oldest or job["jobId"]
        batch.append(job)
        if len(batch) == 5000:
            await store.load_collection("completed", batch)
            batch = []
    await store.load_collection("completed", batch)
    now = datetime.now(UTC) - timedelta(hours=1)
    # 10 queued, 5 built (what the 2026 executor's polls find), the rest at work. Numbers that
    # are not multiples of 20 make no BUMP: each in-progress job has a target of its own.
    in_progress = [
        {
            **seeded_job(
                20 * n + 1,
                now,
                "queued" if n < 10 else "built" if n < 15 else random.choice(STEPS),
                f"IN_PROGRESS_{n:02d}",
            ),
            "datastoreRdn": rdns[n % len(rdns)],
        }
        for n in range(50)
    ]
    for job in in_progress:
        job["log"] = job["log"][:2]
    await store.load_collection("inprogress", in_progress)
    stamp = now.isoformat(timespec="microseconds")
    targets = [
        {
            "datastoreRdn": rdns[n % len(rdns)],
            "name": name,
            "lastUpdatedAt": stamp,
            "status": "completed",
            "lastUpdatedBy": USER,
            "action": ["ADD"],
        }
        for n, name in enumerate(DATASETS)
    ]
    await store.load_collection("targets", targets)
    await store.close()
    return oldest or ""


def make_archives(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        name = f"ARCHIVE_{number:04d}"
        with tarfile.open(directory / f"{name}.tar", "w") as archive:
            for member in (f"{name}.json", "chunks/1.parquet"):
                info = tarfile.TarInfo(member)
                info.size = 64
                archive.addfile(info, io.BytesIO(b"x" * 64))


def found(pattern: str, text: str, flags: int = 0) -> str:
    """The first group of `pattern` in `text`, which a tool's output must hold."""
    match = re.search(pattern, text, flags)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in {text[:200]!r}")
    return match[1]


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory now and at its peak, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    now, peak = (int(found(rf"{key}:\s+(\d+)", status)) / 1024 for key in ("VmRSS", "VmHWM"))
    return now, peak


def parse_duration(text: str) -> float:
    value, unit = found(r"^([\d.]+)", text), found(r"(us|ms|s|m)$", text)
    return float(value) * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}[unit]


def wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    threads = min(connections, 2)
    output = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + DEADLINE,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"{url}: {errors[1]} answers were not 2xx")
    return {
        "rps": float(found(r"Requests/sec:\s+([\d.]+)", output)),
        "p50": parse_duration(found(r"^\s+50%\s+(\S+)\s*$", output, re.MULTILINE)),
        "p99": parse_duration(found(r"^\s+99%\s+(\S+)\s*$", output, re.MULTILINE)),
    }


async def client_loop(url: str, connections: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                assert response.status == 200, url
            latencies.append((time.perf_counter() - start) * 1000)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return {"rps": len(latencies) / seconds, **percentiles(latencies)}


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50": statistics.median(ordered), "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


async def load(url: str, connections: int, seconds: float) -> dict[str, float]:
    if shutil.which("wrk"):
        return await asyncio.to_thread(wrk, url, connections, seconds)
    return await client_loop(url, connections, seconds)


async def lifecycles(base: str, count: int) -> dict[str, dict[str, float]]:
    """POST, 10 status PUTs and the completing PUT, one job after another."""
    completing: list[float] = []
    whole: list[float] = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for number in range(count):
            start = time.perf_counter()
            body = {"jobs": [{"operation": "ADD", "target": f"LIFECYCLE_{uuid.uuid4().hex[:12].upper()}"}]}
            async with session.post(f"{base}/jobs", json=body) as response:
                [result] = await response.json()
            for step in range(10):
                put = {"status": STEPS[step % len(STEPS)], "log": f"step {number}.{step}"}
                async with session.put(f"{base}/jobs/{result['job_id']}", json=put) as response:
                    assert response.status == 200
            finish = time.perf_counter()
            async with session.put(f"{base}/jobs/{result['job_id']}", json={"status": "completed"}) as response:
                assert response.status == 200
            completing.append((time.perf_counter() - finish) * 1000)
            whole.append((time.perf_counter() - start) * 1000)
    return {"completing": percentiles(completing), "whole": percentiles(whole)}


async def provisionings(base: str, count: int) -> list[float]:
    """Milliseconds each of `count` `POST /datastores` took to answer, one after another."""
    times = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for number in range(count):
            body = {
                "rdn": f"bench.provisioned.{letters(number)}",
                "name": f"Provisioned {letters(number)}",
                "description": "Provisioned by the benchmark",
            }
            start = time.perf_counter()
            async with session.post(f"{base}/datastores", json=body) as response:
                answer = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"POST /datastores answered {response.status}: {answer[:200]!r}")
            times.append((time.perf_counter() - start) * 1000)
    return times


class Ceiling:
    """The bare endpoint, measured beside every figure (see the module's docstring)."""

    def __init__(self, url: str, seconds: float) -> None:
        self.url = url
        self.seconds = seconds
        #: Every measurement of the ceiling, by connections.
        self.seen: dict[int, list[float]] = {}

    async def beside(self, url: str, connections: int, rounds: int = 1) -> dict[str, float]:
        """`url` measured `rounds` times, each between two measurements of the ceiling:
        the median of each figure, its ratio to the ceiling (`ratio`) included."""
        results = []
        for _ in range(rounds):
            before = await load(self.url, connections, self.seconds)
            result = await load(url, connections, self.seconds)
            after = await load(self.url, connections, self.seconds)
            self.seen.setdefault(connections, []).extend([before["rps"], after["rps"]])
            results.append({**result, "ratio": result["rps"] * 2 / (before["rps"] + after["rps"])})
        return median_of(results)

    def rows(self) -> list[str]:
        return [
            f"| bare aiohttp (the ceiling), the median of {len(seen)} measurements, "
            f"{min(seen):,.0f} to {max(seen):,.0f} "
            f"| | {connections} | {statistics.median(seen):,.0f} | 100% | | | |"
            for connections, seen in sorted(self.seen.items())
        ]


def row(name: str, size: str, connections: object, result: dict[str, float], reference: float | None = None) -> str:
    """A line of the table; `reference` is the single-datastore req/s this one is compared with."""
    ratio = f"{result['ratio']:.0%}" if "ratio" in result else ""
    rps = f"{result['rps']:,.0f}" if "rps" in result else ""
    versus = f"{result['rps'] / reference:.0%}" if reference else ""
    return (
        f"| {name} | {size} | {connections} | {rps} | {ratio} | {result['p50']:.2f} | {result['p99']:.2f} | {versus} |"
    )


def storage_section(args: argparse.Namespace, directory: Path, size: int) -> dict[str, Any]:
    """A `[storage]` section for a store of its own: under `directory`, or a new MongoDB database."""
    options: dict[str, Any]
    if args.backend == "tinydb":
        options = {"path": str(directory / "data")}
    else:
        database = f"bench_{size}_{uuid.uuid4().hex[:8]}"
        options = {"url": args.mongodb_url, "database": database, "timeout_seconds": 30.0}
    return {"backend": args.backend, args.backend: options}


def startup_row(label: str, startup: float, rss_at_start: float, pid: int, prefix: str = "") -> str:
    rss_now, rss_peak = rss_mb(pid)
    return (
        f"| {prefix}start-up {startup:.2f} s; RSS {rss_at_start:.0f} MB at start, {rss_now:.0f} MB after, "
        f"peak {rss_peak:.0f} MB | {label} | | | | | | |"
    )


def median_of(results: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over rounds of the same measurement."""
    return {key: statistics.median(result[key] for result in results) for key in results[0]}


async def bench_size(args: argparse.Namespace, size: int, ceiling: Ceiling, work: Path) -> list[str]:
    directory = work / f"size-{size}"
    directory.mkdir()
    storage = storage_section(args, directory, size)
    oldest = await seed(storage, size)
    service = ServiceProcess(directory, service_config(storage, work / "input"))
    base = service.url
    startup = await service.start(timeout=DEADLINE)
    rows = []
    try:
        rss_at_start, _ = rss_mb(service.pid)
        label = f"{size:,}"
        for connections in (1, 16):
            result = await ceiling.beside(f"{base}/jobs?status=queued&ignoreCompleted=true", connections, args.rounds)
            rows.append(row("executor poll", label, connections, result))
        compared = [*((f"2026 executor poll: GET {poll}", poll) for poll in POLLS), (BY_ID, f"/jobs/{oldest}")]
        if args.datastores > 1:
            single_rows, datastore_rows = await bench_datastores(args, size, ceiling, work, base, compared)
            rows += single_rows
        else:
            datastore_rows = []
            for name, path in compared:
                for connections in (1, 16):
                    result = await ceiling.beside(base + path, connections, args.rounds)
                    rows.append(row(name, label, connections, result))
        for name, path in [
            ("GET /targets", "/targets"),
            ("GET /jobs?status=queued&operation=ADD,CHANGE", "/jobs?status=queued&operation=ADD,CHANGE"),
        ]:
            for connections in (1, 16):
                result = await ceiling.beside(base + path, connections, args.rounds)
                rows.append(row(name, label, connections, result))
        life = await lifecycles(base, args.lifecycles)
        rows.append(row("lifecycle: the completing PUT", label, 1, life["completing"]))
        rows.append(row("lifecycle: POST + 10 PUTs + completion", label, 1, life["whole"]))
        for connections in (1, 16):
            result = await ceiling.beside(f"{base}/importable-datasets", connections, args.rounds)
            name = "GET /importable-datasets (1,000 archives)"
            rows.append(row(name, label, connections, result))
        rows.append(startup_row(label, startup, rss_at_start, service.pid))
    finally:
        service.stop(timeout=DEADLINE)
    return rows + datastore_rows


async def bench_datastores(
    args: argparse.Namespace,
    size: int,
    ceiling: Ceiling,
    work: Path,
    single: str,
    compared: list[tuple[str, str]],
) -> tuple[list[str], list[str]]:
    """The seed of `size` spread over `args.datastores` datastores, served beside `single` (the
    service on one datastore): the `compared` measures on the two in turn, then provisionings.
    The rows of the single datastore, and those of the datastores."""
    directory = work / f"size-{size}-datastores-{args.datastores}"
    directory.mkdir()
    storage = storage_section(args, directory, size)
    root = directory / "datastores"
    oldest = await seed(storage, size, registered_datastores(root, args.datastores - 1))
    service = ServiceProcess(directory, service_config(storage, work / "input", datastores={"root": str(root)}))
    base = service.url
    startup = await service.start(timeout=DEADLINE)
    single_rows, rows = [], []
    prefix = f"{args.datastores} datastores: "
    label = f"{size:,}"
    try:
        rss_at_start, _ = rss_mb(service.pid)
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(f"{base}/datastores/rdns") as answer:
            rdns = await answer.json()
        if len(rdns) != args.datastores:
            raise RuntimeError(f"the service serves {len(rdns)} datastores, not {args.datastores}: {rdns}")
        for name, path in compared:
            # The job by id is the oldest job of each store: in another datastore than the default here.
            urls = [single + path, base + (f"/jobs/{oldest}" if name == BY_ID else path)]
            for connections in (1, 16):
                results: list[list[dict[str, float]]] = [[], []]
                for round_ in range(args.rounds):
                    # Each service first in every other round: neither is always measured on a warmer machine.
                    for which in (0, 1) if round_ % 2 == 0 else (1, 0):
                        results[which].append(await ceiling.beside(urls[which], connections))
                one, many = (median_of(figures) for figures in results)
                single_rows.append(row(name, label, connections, one))
                rows.append(row(prefix + name, label, connections, many, one["rps"]))
        # Last: each provisioning queues a GENERATE_RSA_KEYS job, which the polls above would find.
        times = await provisionings(base, args.provisionings)
        median, slowest = statistics.median(times), max(times)
        name = f"{prefix}POST /datastores, {len(times)} provisionings (max in the p99 column)"
        rows.append(row(name, label, 1, {"p50": median, "p99": slowest}))
        rows.append(startup_row(label, startup, rss_at_start, service.pid, prefix))
    finally:
        service.stop(timeout=DEADLINE)
    return single_rows, rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["tinydb", "mongodb"], default="tinydb")
    parser.add_argument("--sizes", default="1000,10000,100000", help="completed jobs to seed, comma separated")
    parser.add_argument("--seconds", type=float, default=5, help="duration of each load measurement")
    parser.add_argument("--lifecycles", type=int, default=100, help="jobs taken through their whole life")
    parser.add_argument(
        "--datastores",
        type=int,
        default=1,
        help="also measure each size spread over this many datastores (the default one included), if more than 1",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of each throughput measure, each between two of the ceiling (a figure is their median)",
    )
    parser.add_argument("--provisionings", type=int, default=10, help="datastores provisioned in the datastores case")
    parser.add_argument("--mongodb-url", default=os.environ.get("MONGODB_URL"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args()
    if args.rounds < 1 or args.provisionings < 1:
        parser.error("--rounds and --provisionings must be at least 1")
    random.seed(1)

    server = None
    if args.backend == "mongodb" and not args.mongodb_url:
        command = secantusd()
        if command is None:
            sys.exit("the MongoDB benchmark needs MONGODB_URL or SECANTUSD")
        server = MongoServer(command)
        server.start()
        args.mongodb_url = server.url
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_archives(work / "input", 1000)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(bare_port)])
        try:
            await wait_ready(f"http://127.0.0.1:{bare_port}/", bare, DEADLINE)
            ceiling = Ceiling(f"http://127.0.0.1:{bare_port}/", args.seconds)
            measured = []
            for size in (int(size) for size in args.sizes.split(",")):
                measured += await bench_size(args, size, ceiling, work)
            table = [
                f"Backend: {args.backend}; load: {'wrk' if shutil.which('wrk') else 'aiohttp client loop'}; "
                f"{os.cpu_count()} cores; {args.seconds:g} s per measurement; every throughput the median of "
                f"{args.rounds} round(s), each between two measurements of the ceiling"
                + (
                    f"; the polls and the job by id on one datastore and {args.datastores} in turn."
                    if args.datastores > 1
                    else "."
                ),
                "",
                "| measure | completed jobs | connections | req/s | of ceiling | median ms | p99 ms "
                "| of 1 datastore's req/s |",
                "|---|---|---|---|---|---|---|---|",
                *ceiling.rows(),
                *measured,
            ]
        finally:
            stop_process(bare, timeout=DEADLINE)
            if server is not None:
                server.stop()
    text = "\n".join(table) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
