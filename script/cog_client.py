"""script/predict --url: run one prediction on a running Cog server and show its logs as they grow.

coglet 0.23.1 has no way to poll a prediction (GET /predictions/{id} answers 405) and streams over SSE only for
`@cog.streaming` models, which would change the schema. What it does send while a prediction runs is webhooks:
each carries the prediction with its logs so far. So, for a server on this machine, the client listens on
127.0.0.1 for them and prints each new piece of the logs (seed, steps, stage times) the moment it arrives. A
server elsewhere could not reach that listener: there the prediction runs synchronously and its logs are printed
when it ends.

Every problem a user can fix (no server at the URL, invalid input, a failed prediction, setup failed) is raised
as `ClientError` with one line that says what happened.
"""

from __future__ import annotations

import ipaddress
import json
import queue
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import httpx2

TERMINAL = ("succeeded", "failed", "canceled")
EVENTS = ["start", "output", "logs", "completed"]
BUSY_RETRY_SECONDS = 10  # a 409 means other clients hold every slot (README, "The HTTP server"): wait a little
HEALTH_EVERY_SECONDS = 5  # while waiting for webhooks: is the server still there?


class ClientError(Exception):
    """A problem the user can fix, in one line."""


class CogClient:
    def __init__(self, url: str, print_logs: Callable[[str], None]):
        self.url = url.rstrip("/")
        self.print_logs = print_logs

    # -- before the prediction ----------------------------------------------------------------------------

    def schema(self) -> dict:
        """The server's OpenAPI document (what it validates inputs against)."""
        response = self._get("/openapi.json")
        if response.status_code != 200 or "components" not in response.text:
            raise ClientError(f"{self.url} has no OpenAPI schema (HTTP {response.status_code}): is it a Cog server?")
        return response.json()

    def wait_until_ready(self) -> None:
        """Cog's server answers from the first second, but predicts only once setup() has finished."""
        said = False
        while True:
            health = self._get("/health-check").json()
            status = health.get("status")
            if status in ("READY", "BUSY"):
                return
            if status in ("SETUP_FAILED", "DEFUNCT", "UNHEALTHY"):
                raise ClientError(f"the server at {self.url} is {status}: {_last_line(health)}")
            if not said:
                self.print_logs(f"Waiting for the server's setup to finish ({status})...\n")
                said = True
            time.sleep(0.5)

    # -- the prediction -----------------------------------------------------------------------------------

    def predict(self, inputs: dict) -> dict:
        """The finished prediction (status succeeded), its logs printed on the way; ClientError otherwise."""
        body = self._predict_streaming(inputs) if _is_loopback(self.url) else self._predict_sync(inputs)
        if body.get("status") != "succeeded":
            raise ClientError(f"prediction {body.get('status')}: {_error_text(body)}")
        return body

    def _predict_sync(self, inputs: dict) -> dict:
        body = self._post({"input": inputs}).json()
        self.print_logs(body.get("logs") or "")
        return body

    def _predict_streaming(self, inputs: dict) -> dict:
        with _WebhookReceiver() as receiver:
            request = {"input": inputs, "webhook": receiver.url, "webhook_events_filter": EVENTS}
            accepted = self._post(request, headers={"Prefer": "respond-async"}).json()
            try:
                return self._follow(receiver, accepted.get("id"))
            except KeyboardInterrupt:
                self._cancel(accepted.get("id"))
                raise

    def _follow(self, receiver: _WebhookReceiver, prediction_id: str | None) -> dict:
        """Print the logs as the webhooks bring them, until the prediction ends."""
        printed, idle_looks = 0, 0
        while True:
            body = self._next_event(receiver)
            if body is None:  # nothing for a while: is the server still there, still busy?
                idle_looks = idle_looks + 1 if self._get("/health-check").json().get("status") == "READY" else 0
                if idle_looks >= 2:  # READY twice: our prediction is over, yet its result never came
                    raise ClientError("the prediction ended but its result never arrived; see the server's log")
                continue
            if body.get("id") not in (None, prediction_id):
                continue
            logs = body.get("logs") or ""
            self.print_logs(logs[printed:])
            printed = max(printed, len(logs))
            if body.get("status") in TERMINAL:  # the "completed" webhook: output, error, metrics
                return body

    @staticmethod
    def _next_event(receiver: _WebhookReceiver) -> dict | None:
        try:
            return receiver.events.get(timeout=HEALTH_EVERY_SECONDS)
        except queue.Empty:
            return None

    def _cancel(self, prediction_id: str | None) -> None:
        if prediction_id:
            try:
                httpx2.post(f"{self.url}/predictions/{prediction_id}/cancel", timeout=5)
            except httpx2.HTTPError:
                pass

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _get(self, path: str) -> httpx2.Response:
        try:
            return httpx2.get(self.url + path, timeout=30)
        except httpx2.TransportError as error:
            raise ClientError(self._unreachable(error)) from None

    def _post(self, body: dict, headers: dict | None = None) -> httpx2.Response:
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        while True:
            try:
                response = httpx2.post(f"{self.url}/predictions", json=body, headers=headers, timeout=None)
            except httpx2.TransportError as error:
                raise ClientError(self._unreachable(error)) from None
            if response.status_code != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if response.status_code == 422:
            raise ClientError("invalid input: " + _validation_text(response))
        if response.status_code == 409:
            raise ClientError(f"the server at {self.url} is busy with another prediction; try again when it is done")
        if response.status_code not in (200, 201, 202):
            raise ClientError(f"the server answered HTTP {response.status_code}: {response.text[:300]}")
        return response

    def _unreachable(self, error: httpx2.TransportError) -> str:
        reason = str(error) or error.__class__.__name__
        return f"no Cog server answers at {self.url} ({reason}); start one with script/serve"


class _WebhookReceiver:
    """An HTTP listener on 127.0.0.1 that queues every prediction body Cog POSTs to it."""

    def __init__(self) -> None:
        self.events: queue.Queue[dict] = queue.Queue()
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.end_headers()
                try:
                    events.put(json.loads(data))
                except ValueError:
                    pass  # not a prediction: nothing to show

            def log_message(self, *args) -> None:  # one request per webhook: not worth a line each
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def _validation_text(response: httpx2.Response) -> str:
    """Cog's 422 detail list as `field: message; field: message`."""
    try:
        details = response.json()["detail"]
        return "; ".join(f"{d['loc'][-1]}: {d['msg']}" for d in details)
    except (ValueError, KeyError, IndexError, TypeError):
        return response.text[:300]


def _error_text(body: dict) -> str:
    """Cog words a failure "Prediction failed: Async prediction failed: ValueError: <message>" (an async run();
    "Prediction failed: Prediction failed: ..." for a synchronous one); the message is the news."""
    error = str(body.get("error") or "no error message")
    while error.startswith(("Prediction failed: ", "Async prediction failed: ")):
        error = error.removeprefix("Prediction failed: ").removeprefix("Async prediction failed: ")
    for kind in ("UserInputError: ", "LoraError: ", "ValueError: "):
        error = error.removeprefix(kind)
    return error


def _last_line(health: dict) -> str:
    logs = ((health.get("setup") or {}).get("logs") or "").strip().splitlines()
    return logs[-1] if logs else "no setup logs"
