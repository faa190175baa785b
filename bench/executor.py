"""What watching the executor costs a poll, and GET /targets with 10,000 targets.

Services on copies of one seeded store (50 jobs in progress, 1,000 completed,
10,500 targets in the default datastore): this checkout, the release before the
executor was watched (`--before`, a commit of this repository, exported with `git
archive`) and, with `--also`, another commit (main, to see what a branch changes).
Measured on loopback, in alternating rounds so that all see the same machine (the
order reversed each round), every figure the median of its rounds:

- the executor's polls at 16 connections on every service: what noting each poll
  (ExecutorWatch) and tagging its answer (ETag) cost, as each one's req/s over the
  release before's, and as the CPU time each service spent per poll (goal: a poll
  less than 5% slower). The throughput of two services running the same code differs
  by up to 10% on a shared machine (`--before HEAD` shows it); the CPU per poll much less;
- GET /targets at 1 and 16 connections on this checkout, beside a bare aiohttp endpoint
  serving the same bytes (goal: at least 25% of its req/s), and on the release before.

    python bench/executor.py --out bench/results-executor.md
    python bench/executor.py --also main --rounds 9

Load comes from wrk when it is installed, else from an aiohttp client loop (see run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "tests")]

from helpers import DEFAULT_DATASTORE, service_config, store_options  # noqa: E402
from mongo_server import free_port  # noqa: E402
from run import DEADLINE, POLLS, ROOT, USER, load, seed  # noqa: E402
from service_process import ServiceProcess, stop_process, wait_ready  # noqa: E402

from backends import open_store  # noqa: E402

#: The commit before ExecutorWatch: the same service without the watch, the ETags and the kept targets.
BEFORE = "134165b"
TARGETS = 10_000
#: The 2025 executor's poll, then the 2026 executor's three.
MEASURED_POLLS = ["/jobs?status=queued&ignoreCompleted=true", *POLLS]
BARE_BYTES_APP = """
import sys
from aiohttp import web
body = open(sys.argv[2], "rb").read()
async def answer(request): return web.Response(body=body, content_type="application/json", charset="utf-8")
app = web.Application(); app.router.add_get("/", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


async def seed_targets(storage: dict) -> None:
    """`TARGETS` more targets in the default datastore, as jobs long finished left them."""
    store = await open_store(store_options(storage), DEFAULT_DATASTORE)
    targets = [
        {
            "datastoreRdn": DEFAULT_DATASTORE,
            "name": f"TARGET_{number:05d}",
            "lastUpdatedAt": "2026-11-29T10:00:00.000000+00:00",
            "status": "completed",
            "lastUpdatedBy": USER,
            "action": ["SET_STATUS", "PENDING_RELEASE"],
        }
        for number in range(TARGETS)
    ]
    await store.load_collection("targets", targets)
    await store.close()


def export(revision: str, directory: Path) -> Path:
    """The checkout of `revision`, exported into `directory`: its job_service.py."""
    directory.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory / "job_service.py"


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def alternating(
    urls: dict[str, str], connections: int, rounds: int, seconds: float, pids: dict[str, int] | None = None
) -> dict[str, dict]:
    """Each url measured `rounds` times in turn, the order swapped each round: medians by name.
    With the serving process's pid, also the CPU time it spent per request (`cpu_us`), which
    the other load on a shared machine moves far less than the throughput."""
    results: dict[str, list[dict]] = {name: [] for name in urls}
    names = list(urls)
    for number in range(rounds):
        for name in names if number % 2 == 0 else reversed(names):
            pid = (pids or {}).get(name)
            before = cpu_seconds(pid) if pid else 0.0
            result = await load(urls[name], connections, seconds)
            if pid:
                result["cpu_us"] = (cpu_seconds(pid) - before) / (result["rps"] * seconds) * 1e6
            results[name].append(result)
    return {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in results.items()}


def load_average(figures: tuple[float, float, float]) -> str:
    """The 1, 5 and 15 minutes' load average: how much else the machine ran."""
    return "/".join(f"{figure:.1f}" for figure in figures)


def row(name: str, connections: int, result: dict, versus: str = "") -> str:
    return f"| {name} | {connections} | {result['rps']:,.0f} | {result['p50']:.2f} | {result['p99']:.2f} | {versus} |"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="the commit to compare with")
    parser.add_argument("--also", help="another commit whose polls are measured in the same rounds (main)")
    parser.add_argument("--seconds", type=float, default=4, help="duration of each load measurement")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each measurement (a figure is their median)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-executor.md")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    started = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "input").mkdir()
        seeded = work / "seeded"
        storage = {"backend": "tinydb", "tinydb": {"path": str(seeded)}}
        await seed(storage, 1000)
        await seed_targets(storage)
        revisions = {"before": args.before, **({"also": args.also} if args.also else {}), "now": None}
        services = {}
        for name, revision in revisions.items():
            # The seeded audit trail is empty, and a release before it refuses an audit/ it does not know.
            ignored = None if revision is None else shutil.ignore_patterns("audit")
            shutil.copytree(seeded, work / name / "data", ignore=ignored)
            config = service_config(
                {"backend": "tinydb", "tinydb": {"path": str(work / name / "data")}}, work / "input"
            )
            services[name] = service = ServiceProcess(work / name, config)
            if revision is not None:
                script = export(revision, work / f"checkout-{name}")
                service.command = (sys.executable, str(script), "--config", str(service.config))
        bare = None
        try:
            for service in services.values():
                await service.start(timeout=DEADLINE)
            async with aiohttp.ClientSession() as session, session.get(services["now"].url + "/targets") as response:
                targets = await response.read()
            (work / "targets.json").write_bytes(targets)
            bare_port = free_port()
            bare = subprocess.Popen([sys.executable, "-c", BARE_BYTES_APP, str(bare_port), str(work / "targets.json")])
            await wait_ready(f"http://127.0.0.1:{bare_port}/", bare, DEADLINE)
            rows = []
            for poll in MEASURED_POLLS:
                urls = {name: service.url + poll for name, service in services.items()}
                pids = {name: service.pid for name, service in services.items()}
                result = await alternating(urls, 16, args.rounds, args.seconds, pids)
                before = result["before"]
                cpu = f"{before['cpu_us']:.1f} µs CPU per poll"
                rows.append(row(f"poll {poll}, before ({args.before})", 16, before, cpu))
                for name, measured in result.items():
                    if name != "before":
                        change, cpu_change = (
                            measured["rps"] / before["rps"] - 1,
                            measured["cpu_us"] / before["cpu_us"] - 1,
                        )
                        cpu = f"{measured['cpu_us']:.1f} µs CPU per poll ({cpu_change:+.1%})"
                        label = "now" if name == "now" else f"{name} ({revisions[name]})"
                        rows.append(row(f"poll {poll}, {label}", 16, measured, f"{change:+.1%} req/s; {cpu}"))
            for connections in (1, 16):
                urls = {
                    "bare": f"http://127.0.0.1:{bare_port}/",
                    "now": services["now"].url + "/targets",
                    "before": services["before"].url + "/targets",
                }
                result = await alternating(urls, connections, args.rounds, args.seconds)
                of_bare = result["now"]["rps"] / result["bare"]["rps"]
                rows.append(row("bare aiohttp serving the same bytes", connections, result["bare"], "100%"))
                rows.append(row("GET /targets, now", connections, result["now"], f"{of_bare:.0%} of bare"))
                before_of_bare = result["before"]["rps"] / result["bare"]["rps"]
                rows.append(
                    row(
                        f"GET /targets, before ({args.before})",
                        connections,
                        result["before"],
                        f"{before_of_bare:.0%} of bare",
                    )
                )
        finally:
            for service in services.values():
                if service.process is not None:
                    service.stop()
            if bare is not None:
                stop_process(bare, timeout=DEADLINE)
    table = [
        f"TinyDB; load: {'wrk' if shutil.which('wrk') else 'aiohttp client loop'}; {os.cpu_count()} cores "
        f"(load average {load_average(started)} at the start, {load_average(os.getloadavg())} at the end); "
        f"{args.seconds:g} s per measurement; every figure the median of {args.rounds} alternating round(s); "
        f"GET /targets is {len(targets):,} bytes ({TARGETS + 500:,} targets).",
        "",
        "| measure | connections | req/s | median ms | p99 ms | versus |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(table) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
