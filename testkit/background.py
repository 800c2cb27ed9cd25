"""A long CPU-bound command started early, at the lowest CPU priority, for a test that needs its result later.

The suite keeps one of two cores busy on average (it waits on servers, sockets and subprocesses much of the time).
A command that takes many seconds of CPU and shares nothing with other tests (script/gpu-check --dry) starts when
the session starts and runs on what the other tests leave idle; at nice 19 it takes almost nothing from them
when both cores are busy. The test that needs it then waits only for what is left.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path


class BackgroundRun:
    """`command` running now at nice 19, stdout and stderr in files under `folder`."""

    def __init__(self, command: Sequence[str | os.PathLike], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.command, self.folder = [str(part) for part in command], folder
        self.stdout_path, self.stderr_path = folder / "stdout", folder / "stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(["nice", "-n", "19", *self.command], stdout=out, stderr=err)

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """The finished command, as `subprocess.run(..., capture_output=True, text=True)` gives it."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        stdout, stderr = self.stdout_path.read_text(), self.stderr_path.read_text()
        return subprocess.CompletedProcess(self.command, self.process.returncode, stdout, stderr)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
