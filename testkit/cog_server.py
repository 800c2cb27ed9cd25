"""Start the real Cog HTTP server (cog + coglet) in a subprocess, as the integration tests need it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from testkit.fakes.core import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


class CogServer:
    def __init__(
        self,
        env: dict[str, str],
        target: str = "predict.py:Predictor",
        log_path: Path | None = None,
        via_script: bool = False,
    ):
        # script/serve as users start it, or the server module straight from the repo (committed schema).
        self.command = (
            [str(REPO_ROOT / "script/serve"), "--target", target]
            if via_script
            else [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = {
            **env,
            "COG_PREDICT_TYPE_STUB": target,
            "PORT": str(self.port),
            # coglet starts its worker with the first `python` on PATH: it must be this interpreter.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> CogServer:
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Cog server exited with {self.process.returncode}; see {self.log_path}")
            status = self.health().get("status")
            if status == "READY":
                return self
            if status == "SETUP_FAILED":
                raise RuntimeError(f"Cog server setup failed: {self.health()}")
            time.sleep(0.3)
        raise TimeoutError(f"Cog server not READY after {timeout} s; see {self.log_path}")

    def health(self) -> dict:
        try:
            return httpx.get(f"{self.url}/health-check", timeout=5).json()
        except httpx.TransportError:
            return {}

    def predict(self, **inputs) -> httpx.Response:
        return httpx.post(f"{self.url}/predictions", json={"input": inputs}, timeout=300)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
