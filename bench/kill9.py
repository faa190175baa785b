"""Kill the service with SIGKILL at random moments while clients post and complete jobs.

Each round starts `job-service` on one data directory (kept across rounds), lets clients
work and kills the process at a random instant with writes in flight: three clients post
one job at a time and complete it, one posts 5 to 50 jobs in one request and completes
them, and one posts BUMPs whose manifestos release or remove 2,000 datasets and completes
them. The next round's start must open the store, and then:
- every job and every completion that got a 200 before the kill is there, each job once;
- every target shows what the last change of its job shows, as one write would leave it:
  a job's target its status, action and the time of its last log entry; the DATASTORE
  target the newest BUMP; every dataset a completed BUMP released or removed, that BUMP
  at the time of its completion; no dataset of a BUMP not completed; no other target;
- one more client provisions datastores one after another (POST /datastores): every
  datastore acknowledged is registered with its keys job and its directory whole; every
  registered datastore has its keys job and no provisioning marker left; the rdn a kill
  cut short is not blocked: posted again, it is created (200), or it is there (409, taken).

    python bench/kill9.py --rounds 50

Prints a table and exits 1 if anything acknowledged was lost or any target is inconsistent.
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
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import DEFAULT_DATASTORE, bump_job, service_config
from service_process import ServiceProcess

TIMEOUT = aiohttp.ClientTimeout(total=60)  # a request the killed service never answers fails, not hangs
RELEASE_STATUSES = ["PENDING_RELEASE", "PENDING_DELETE", "DRAFT"]


@dataclass
class Acknowledged:
    created: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)
    #: Set while a BUMP's completing PUT is in flight.
    completing_bump: bool = False
    #: Provisioned datastores: rdn -> the id of its keys job.
    datastores: dict[str, str] = field(default_factory=dict)
    #: The rdn whose POST /datastores is in flight.
    provisioning: str | None = None


@dataclass
class Findings:
    lost: int = 0
    inconsistent: list[str] = field(default_factory=list)
    targets: int = 0
    bumps_completed: int = 0
    #: Kills that fell while a BUMP's completion was in flight.
    kills_in_bumps: int = 0
    kills_in_provisionings: int = 0
    #: An rdn a kill cut short whose next POST was neither created nor taken.
    blocked: int = 0
    #: Registered datastores without a keys job, or with an unfinished directory.
    without_keys_job: int = 0
    unfinished: int = 0


async def complete(session: aiohttp.ClientSession, base: str, acked: Acknowledged, job_id: str) -> None:
    for status in ("validating", "completed"):
        async with session.put(f"{base}/jobs/{job_id}", json={"status": status, "log": f"Now {status}"}) as response:
            assert response.status == 200, await response.text()
    acked.completed.add(job_id)


async def post(session: aiohttp.ClientSession, base: str, jobs: list[dict[str, Any]]) -> list[dict[str, str]]:
    async with session.post(f"{base}/jobs", json={"jobs": jobs}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def single_client(base: str, acked: Acknowledged, name: str) -> None:
    """Post jobs one at a time and complete them, recording only what was answered with a 200."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for n in range(1, 1_000_000):
            [result] = await post(session, base, [{"operation": "ADD", "target": f"{name}_{n}"}])
            assert result["msg"] == "CREATED", result
            acked.created.add(result["job_id"])
            await complete(session, base, acked, result["job_id"])


async def batch_client(base: str, acked: Acknowledged, name: str) -> None:
    """Post 5 to 50 jobs in one request, then complete them one by one."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for n in range(1, 1_000_000):
            entries = [{"operation": "CHANGE", "target": f"{name}_{n}_{e}"} for e in range(random.randint(5, 50))]
            results = await post(session, base, entries)
            assert all(result["msg"] == "CREATED" for result in results), results
            acked.created.update(result["job_id"] for result in results)
            for result in results:
                await complete(session, base, acked, result["job_id"])


async def bump_client(base: str, acked: Acknowledged, name: str, datasets: int) -> None:
    """Post BUMPs with large manifestos and complete them, one at a time (a BUMP holds DATASTORE):
    first any BUMP a kill left in progress."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(f"{base}/jobs?operation=BUMP&ignoreCompleted=true") as response:
            left = await response.json()
        for job in left:
            await complete(session, base, acked, job["jobId"])
        for n in range(1, 1_000_000):
            updates = [
                {"name": f"{name}_{n}_D{d}", "description": "d", "operation": "ADD", "releaseStatus": status}
                for d, status in zip(range(datasets), RELEASE_STATUSES * datasets, strict=False)
            ]
            bump = bump_job()
            bump["bumpManifesto"]["dataStructureUpdates"] = updates
            [result] = await post(session, base, [bump])
            assert result["msg"] == "CREATED", result
            acked.created.add(result["job_id"])
            async with session.put(f"{base}/jobs/{result['job_id']}", json={"status": "validating"}) as response:
                assert response.status == 200, await response.text()
            acked.completing_bump = True
            async with session.put(f"{base}/jobs/{result['job_id']}", json={"status": "completed"}) as response:
                assert response.status == 200, await response.text()
            acked.completing_bump = False
            acked.completed.add(result["job_id"])


def letters(n: int) -> str:
    """`n` in letters (an rdn has no digits): 0 -> a, 26 -> ba."""
    text = ""
    while True:
        n, digit = divmod(n, 26)
        text = chr(ord("a") + digit) + text
        if not n:
            return text


async def provisioning_client(base: str, acked: Acknowledged, number: int) -> None:
    """Provision datastores one after another, recording those answered with a 200."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for n in range(1_000_000):
            rdn = f"bench.r{letters(number)}.p{letters(n)}"
            acked.provisioning = rdn
            body = {"rdn": rdn, "name": "Bench", "description": f"Round {number}"}
            async with session.post(f"{base}/datastores", json=body) as response:
                assert response.status == 200, await response.text()
                acked.datastores[rdn] = (await response.json())["job_id"]
            acked.provisioning = None


async def check_datastores(
    session: aiohttp.ClientSession,
    base: str,
    root: Path,
    acked: Acknowledged,
    jobs: list[dict[str, Any]],
    findings: Findings,
) -> None:
    """Post again the rdn a kill cut short; count what is blocked, lost, or unfinished."""
    if acked.provisioning is not None:
        rdn, acked.provisioning = acked.provisioning, None
        body = {"rdn": rdn, "name": "Bench", "description": "Again"}
        async with session.post(f"{base}/datastores", json=body) as response:
            answer = await response.json()
            if response.status == 200:
                acked.datastores[rdn] = answer["job_id"]
            elif response.status != 409 or "already exists" not in answer["message"]:
                findings.blocked += 1
        async with session.get(f"{base}/jobs") as response:
            jobs = await response.json()
    async with session.get(f"{base}/datastores/rdns") as response:
        registered = set(await response.json()) - {DEFAULT_DATASTORE}
    findings.lost += len(acked.datastores.keys() - registered)
    keys_jobs = {job["datastoreRdn"]: job["jobId"] for job in jobs if job["parameters"]["target"] == "DATASTORE"}
    findings.lost += sum(keys_jobs.get(rdn) != job_id for rdn, job_id in acked.datastores.items())
    findings.without_keys_job += len(registered - keys_jobs.keys())
    findings.unfinished += sum(
        (root / rdn / ".provisioning.json").exists() or not (root / rdn / "datastore" / "draft_version.json").exists()
        for rdn in registered
    )


def last_change(job: dict[str, Any]) -> str:
    return job["log"][-1]["at"] if job["log"] else job["createdAt"]


def expected_targets(jobs: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    """What every target must show, from the jobs as stored (each name is touched by one job,
    but DATASTORE, which the newest BUMP shows)."""
    expected: dict[str, tuple[Any, ...]] = {}
    for job in jobs:  # in job order: a later BUMP's DATASTORE replaces an earlier one's
        parameters = job["parameters"]
        action = [parameters["operation"]]
        if parameters["operation"] == "BUMP":
            action += [parameters["bumpFromVersion"], parameters["bumpToVersion"]]
        expected[parameters["target"]] = (job["status"], action, last_change(job))
        if parameters["operation"] == "BUMP" and job["status"] == "completed":
            for update in parameters["bumpManifesto"]["dataStructureUpdates"]:
                if update["releaseStatus"] != "DRAFT":
                    outcome = "RELEASED" if update["releaseStatus"] == "PENDING_RELEASE" else "REMOVED"
                    expected[update["name"]] = ("completed", [outcome, parameters["bumpToVersion"]], last_change(job))
    return expected


async def check(base: str, root: Path, acked: Acknowledged, findings: Findings) -> None:
    """Count what acknowledged is missing and every target that disagrees with its jobs."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(f"{base}/jobs") as response:
            every = await response.json()
        async with session.get(f"{base}/targets") as response:
            targets = await response.json()
        await check_datastores(session, base, root, acked, every, findings)
    jobs = [job for job in every if job["datastoreRdn"] == DEFAULT_DATASTORE]
    ids = [job["jobId"] for job in jobs]
    if len(ids) != len(set(ids)):
        raise RuntimeError("a job is listed twice")
    status = {job["jobId"]: job["status"] for job in jobs}
    missing = acked.created - status.keys()
    not_completed = {job_id for job_id in acked.completed if status.get(job_id) != "completed"}
    findings.lost += len(missing) + len(not_completed - missing)

    expected = expected_targets(jobs)
    shown = {target["name"]: (target["status"], target["action"], target["lastUpdatedAt"]) for target in targets}
    findings.targets += len(shown)
    for name in sorted(expected.keys() | shown.keys()):
        if expected.get(name) != shown.get(name):
            findings.inconsistent.append(f"{name}: shows {shown.get(name)}, its jobs say {expected.get(name)}")
    findings.bumps_completed = sum(
        job["parameters"]["operation"] == "BUMP" and job["status"] == "completed" for job in jobs
    )


async def run_round(
    service: ServiceProcess, root: Path, acked: Acknowledged, findings: Findings, number: int, datasets: int
) -> float:
    startup = await service.start(timeout=120)
    clients = []
    try:
        await check(service.url, root, acked, findings)
        clients = [
            asyncio.ensure_future(provisioning_client(service.url, acked, number)),
            *(asyncio.ensure_future(single_client(service.url, acked, f"R{number}_C{c}")) for c in range(3)),
            asyncio.ensure_future(batch_client(service.url, acked, f"R{number}_M")),
            asyncio.ensure_future(bump_client(service.url, acked, f"R{number}_B", datasets)),
        ]
        await asyncio.sleep(random.uniform(0.1, 1.5))
    finally:
        service.stop(signal.SIGKILL)
        findings.kills_in_bumps += acked.completing_bump
        findings.kills_in_provisionings += acked.provisioning is not None
    results = await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), 120)
    acked.completing_bump = False
    # The kill ends every client with a connection error; anything else is a wrong answer.
    unexpected = [r for r in results if not isinstance(r, aiohttp.ClientError)]
    if unexpected:
        raise RuntimeError(f"a client got a wrong answer: {unexpected!r}")
    return startup


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--datasets", type=int, default=2000, help="datasets in each BUMP's manifesto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        storage = {"tinydb": {"path": f"{tmp}/data"}}
        config = service_config(storage, Path(tmp) / "input", jobs={"bump_enabled": True})
        service = ServiceProcess(Path(tmp), config)
        acked, findings = Acknowledged(), Findings()
        root = Path(tmp) / "datastores"
        startups = [await run_round(service, root, acked, findings, n, args.datasets) for n in range(args.rounds)]
        await service.start(timeout=120)
        try:
            await check(service.url, root, acked, findings)
        finally:
            service.stop(signal.SIGKILL)

    for line in findings.inconsistent[:20]:
        print(f"inconsistent: {line}", file=sys.stderr)
    startups.sort()
    print(
        "| kill -9 rounds | store opened | jobs acknowledged | completions acknowledged | BUMPs completed "
        "| targets checked | lost | inconsistent targets | start-up median | kills during a BUMP's completion "
        "| datastores provisioned | kills during a provisioning | blocked rdns | datastores without a keys job "
        "| unfinished directories |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.rounds} | {args.rounds + 1}/{args.rounds + 1} | {len(acked.created)} | {len(acked.completed)} "
        f"| {findings.bumps_completed} | {findings.targets} | {findings.lost} | {len(findings.inconsistent)} "
        f"| {startups[len(startups) // 2] * 1000:.0f} ms | {findings.kills_in_bumps} | {len(acked.datastores)} "
        f"| {findings.kills_in_provisionings} | {findings.blocked} | {findings.without_keys_job} "
        f"| {findings.unfinished} |"
    )
    broken = findings.blocked or findings.without_keys_job or findings.unfinished
    return 1 if findings.lost or findings.inconsistent or broken else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
