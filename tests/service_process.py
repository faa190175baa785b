"""The service as operators run it: `python -m job_service` in a process of its own.

Every wait here has a deadline, so that a service that never comes up, or never exits,
fails the test or the benchmark instead of hanging it.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from helpers import write_config
from mongo_server import free_port

REPOSITORY = Path(__file__).resolve().parent.parent


async def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> float:
    """Poll `url` until it answers 200: the seconds that took.

    Raises RuntimeError if `process` exits first or `timeout` seconds pass.
    """
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while time.monotonic() - start < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"{url}: the process exited at start with {process.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return time.monotonic() - start
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError(f"{url} was not ready within {timeout:g} s")


def stop_process(process: subprocess.Popen, how: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
    """Send `how` and wait at most `timeout` seconds, then SIGKILL: the exit code."""
    if process.poll() is None:
        process.send_signal(how)
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=timeout)


class ServiceProcess:
    """One job-service process on a free port; its stdout (the logs) goes to a file."""

    def __init__(self, directory: Path, config: dict[str, Any], command: tuple[str, ...] | None = None) -> None:
        """`config` is the config file's TOML sections, as dicts; the port is added to `[server]` here."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = {**config.get("server", {}), "port": self.port}
        self.config = write_config(directory / f"service-{self.port}.toml", {**config, "server": server})
        self.log_path = directory / f"service-{self.port}.log"
        self.command = command or (sys.executable, "-m", "job_service", "--config", str(self.config))
        self.process: subprocess.Popen | None = None

    async def start(self, env: dict[str, str] | None = None, timeout: float = 30) -> float:
        """Start the process and wait until it is ready: the seconds that took.

        A service that exits or is not ready in time is killed, and the error carries its log.
        """
        with open(self.log_path, "ab") as log:
            # Run in the checkout: `-m job_service` is then this checkout's, whatever the caller's directory.
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPOSITORY)
        try:
            return await wait_ready(f"{self.url}/health/ready", self.process, timeout)
        except RuntimeError as exc:
            stop_process(self.process, signal.SIGKILL)
            raise RuntimeError(f"{exc}; its log:\n{self.log_path.read_text()}") from None

    def stop(self, how: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `how` and wait: the exit code."""
        assert self.process is not None
        return stop_process(self.process, how, timeout)

    @property
    def pid(self) -> int:
        assert self.process is not None, "the service was never started"
        return self.process.pid

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()
