"""A real MongoDB wire-protocol server for the tests: SecantusDB, run as its own process.

It is a test tool installed in a venv of its own (see the README's test command), found
through `SECANTUSD` (the path of its `secantusd-py`) or on PATH. `MONGODB_URL` points the
tests at a server that is already running instead (a mongod started with
`--setParameter enableTestCommands=1`, for the tests that inject failures).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError


def secantusd() -> str | None:
    return os.environ.get("SECANTUSD") or shutil.which("secantusd-py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MongoServer:
    """One secantusd-py process on a fixed port, which can be stopped and started again."""

    def __init__(self, command: str, storage: Path | None = None) -> None:
        self.command = command
        self.storage = str(storage) if storage else ":memory:"
        self.port = free_port()
        self.url = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        self.process = subprocess.Popen(
            # Test commands on: tests fail chosen commands with the `failCommand` fail point, as on a mongod.
            [
                self.command,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                self.storage,
                "--enable-test-commands",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        client: MongoClient = MongoClient(self.url, serverSelectionTimeoutMS=500)
        with client:
            while True:
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"{self.command} did not start on port {self.port}") from None
                    time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
