"""Start the real Cog HTTP server (cog + coglet) in a subprocess, as the integration tests need it, with the
prediction slots a `cog build` image would have (the predictor's `@cog.concurrent`; script/cog_concurrency.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2

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
            "COG_MAX_CONCURRENCY": str(cog_max_concurrency(target)),  # as the image's; env may set another
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
            return httpx2.get(f"{self.url}/health-check", timeout=5).json()
        except httpx2.TransportError:
            return {}

    def predict(self, **inputs) -> httpx2.Response:
        return httpx2.post(f"{self.url}/predictions", json={"input": inputs}, timeout=300)

    def predict_when_admitted(self, **inputs) -> httpx2.Response:
        """`predict`, sent again while coglet answers `409 At capacity`, as Replicate and script/predict do.

        For tests that send requests at once: coglet frees a slot only when the worker's `Idle` for the
        previous prediction arrives, which on a loaded machine can come seconds after that prediction was
        answered, so a free slot may still count as busy (CI saw 409 for the second of two requests with
        four slots). Retrying every 50 ms keeps such a test about what it tests."""
        return _admitted(lambda: self.predict(**inputs))

    def begin(self, prediction_id: str, webhooks: Webhooks, **inputs) -> httpx2.Response:
        """Start a prediction without waiting for it; its progress (logs, the end) arrives at `webhooks`.
        Sent again while coglet answers 409, as `predict_when_admitted` says why."""
        body = {"input": inputs, "webhook": webhooks.url, "webhook_events_filter": ["start", "logs", "completed"]}
        headers = {"Prefer": "respond-async"}
        url = f"{self.url}/predictions/{prediction_id}"
        return _admitted(lambda: httpx2.put(url, json=body, headers=headers, timeout=30))

    def cancel(self, prediction_id: str) -> httpx2.Response:
        return httpx2.post(f"{self.url}/predictions/{prediction_id}/cancel", timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


BUSY_RETRY_SECONDS = 20


def _admitted(send: Callable[[], httpx2.Response]) -> httpx2.Response:
    deadline = time.monotonic() + BUSY_RETRY_SECONDS
    response = send()
    while response.status_code == 409 and time.monotonic() < deadline:
        time.sleep(0.05)
        response = send()
    return response


def cog_max_concurrency(target: str) -> int:
    """The slots `cog build` would give `target`: script/cog_concurrency.py, loaded from its file."""
    spec = importlib.util.spec_from_file_location("cog_concurrency", REPO_ROOT / "script" / "cog_concurrency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.max_concurrency(target, REPO_ROOT)


class Webhooks:
    """A listener on 127.0.0.1 for the webhooks Cog sends while predictions run (coglet cannot be polled): the
    latest body of each prediction, and a way to wait until one says something."""

    def __init__(self) -> None:
        self.latest: dict[str, dict] = {}
        self._changed = threading.Condition()
        webhooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(200)
                self.end_headers()
                with webhooks._changed:
                    webhooks.latest[body.get("id")] = body
                    webhooks._changed.notify_all()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/webhook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait(self, prediction_id: str, until: Callable[[dict], bool], timeout: float = 60) -> dict:
        """The prediction's latest body once `until(body)` holds; TimeoutError with the last body otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: until(self.latest.get(prediction_id) or {}), timeout):
                raise TimeoutError(f"{prediction_id}: {self.latest.get(prediction_id)}")
            return self.latest[prediction_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Webhooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
