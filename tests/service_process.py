"""The service as operators run it: `python -m job_service` in a process of its own."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from mongo_server import free_port


class ServiceProcess:
    """One job-service process on a free port; its stdout (the logs) goes to a file."""

    def __init__(self, directory: Path, config: str, command: tuple[str, ...] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / f"service-{self.port}.toml"
        self.config.write_text(f"[server]\nport = {self.port}\n{config}")
        self.log_path = directory / f"service-{self.port}.log"
        self.command = command or (sys.executable, "-m", "job_service", "--config", str(self.config))
        self.process: subprocess.Popen | None = None

    async def start(self, env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env)
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                if self.process.poll() is not None:
                    raise RuntimeError(f"the service exited at start:\n{self.log_path.read_text()}")
                try:
                    async with session.get(f"{self.url}/health/ready") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("the service did not become ready")

    def stop(self, how: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `how` and wait: the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(how)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()
