"""Runs the system's processes (web, worker, beat) together and stops them together."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServiceDied(RuntimeError):
    def __init__(self, name: str, code: int, log: Path) -> None:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        super().__init__(f"{name} exited with code {code}; last lines of {log}:\n{tail}")


@dataclass
class Supervisor:
    log_dir: Path
    env: dict[str, str]
    processes: dict[str, tuple[subprocess.Popen, Path]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Path:
        """Start ``argv`` with its output in ``<log_dir>/<name>.log``; returns the log path."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as fh:
            process = subprocess.Popen(
                argv, env={**self.env, **(extra_env or {})}, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.processes[name] = (process, log)
        return log

    def check(self) -> None:
        """Raise ServiceDied when any process has exited."""
        for name, (process, log) in self.processes.items():
            code = process.poll()
            if code is not None:
                raise ServiceDied(name, code, log)

    def wait(self) -> None:
        """Block until a process dies (ServiceDied) or the caller is interrupted."""
        while True:
            self.check()
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process group (warm shutdown), then SIGKILL what is left."""
        for process, _ in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process, _ in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
