"""What a huggingface_hub failure means, in words a user can act on: one explanation for base weights and LoRAs.

huggingface_hub raises typed errors (gated repo, unknown repo, revision or file, an HTTP status, offline mode)
and, for the network, httpx2's transport errors; a full or read-only disk is an OSError. `explain` turns one
of them into a `HubProblem`: its `kind`, and a text that says what happened and what to do on the Hub's side
(accept the licence, set HF_TOKEN, check HF_ENDPOINT). Each caller ends the sentence with its own advice
for that kind (the weights: "or put the weights in WEIGHTS_DIR/…"; a LoRA: "or give the LoRA as a local
path") through `HubProblem.message`. Anything else is not explained (None): the caller lets it propagate
with its traceback. The token is never in the text, even where library text is quoted.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its transport errors are what a network failure raises
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

TOKENS_PAGE = "https://huggingface.co/settings/tokens"
HUB_PAGE = "https://huggingface.co"
# Failures in the middle of a transfer: what was written is worth resuming.
_INTERRUPTIONS = (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.ReadTimeout)


class Kind(StrEnum):
    OFFLINE = "offline"  # HF_HUB_OFFLINE is set
    GATED = "gated"  # no token, or the token's account has not accepted the repo's conditions
    TOKEN_REFUSED = "token refused"  # 401: invalid or expired token
    FORBIDDEN = "forbidden"  # 403: the token may not read the repo
    REPO_NOT_FOUND = "repo not found"  # or private and not readable with the token sent
    REVISION_NOT_FOUND = "revision not found"
    FILE_NOT_FOUND = "file not found"
    UNAVAILABLE = "unavailable"  # 429 or 5xx: the Hub is busy or down
    NOT_A_HUB = "not a hub"  # the endpoint answers like no Hub would
    INTERRUPTED = "interrupted"  # the transfer started and then broke
    UNREACHABLE = "unreachable"  # no connection to the endpoint
    DISK_FULL = "disk full"
    NOT_WRITABLE = "not writable"


@dataclass(frozen=True)
class HubCall:
    """What was being fetched when the error happened, for the words of the explanation."""

    repo_id: str
    endpoint: str
    token: str | None  # whether one was sent decides the advice; its value is scrubbed from any text
    subject: str  # what the user knows it as: "FLUX.1-dev", "huggingface.co/owner/repo"
    revision: str = "main"
    filename: str | None = None  # the file (or files) being fetched
    transferring: bool = False  # file bytes were on their way: a broken connection is an interruption
    folder: Path | None = None  # where files were written; None: disk errors are not this module's to word


@dataclass(frozen=True)
class HubProblem:
    kind: Kind
    text: str  # what happened and the Hub-side fix, without the final period

    def message(self, ending: str = "") -> str:
        """The whole message: `ending` is the caller's advice (", or …" or ". …"), then the period."""
        return f"{self.text}{ending}."


def explain(error: BaseException, call: HubCall) -> HubProblem | None:
    """The problem `error` means for `call`, or None when it is not one a user can fix."""
    cause = _root_cause(error)
    for explainer in (_access, _status, _network, _disk):
        problem = explainer(cause, call)
        if problem is not None:
            return HubProblem(problem.kind, _scrub(problem.text, call.token))
    return None


def _root_cause(error: BaseException) -> BaseException:
    """hf_hub_download wraps a failed metadata request in LocalEntryNotFoundError: look at what failed."""
    if isinstance(error, LocalEntryNotFoundError) and isinstance(error.__cause__, Exception):
        return error.__cause__
    return error


def _access(error: BaseException, call: HubCall) -> HubProblem | None:
    repo, page = call.repo_id, f"{HUB_PAGE}/{call.repo_id}"
    if isinstance(error, GatedRepoError):
        if call.token is None:
            return HubProblem(
                Kind.GATED,
                f"{call.subject} is gated: accept the licence at {page}, then set HF_TOKEN to a read token of that "
                f"account ({TOKENS_PAGE})",
            )
        return HubProblem(
            Kind.GATED,
            f"HF_TOKEN has no access to the gated {repo}: accept the licence at {page} with the account the token "
            "belongs to (approval can take a while)",
        )
    if isinstance(error, RevisionNotFoundError):
        return HubProblem(
            Kind.REVISION_NOT_FOUND, f"{repo} has no revision {call.revision!r}. Check the branch or commit"
        )
    if isinstance(error, RepositoryNotFoundError):
        return _repo_not_found(call)
    if isinstance(error, RemoteEntryNotFoundError):
        return HubProblem(
            Kind.FILE_NOT_FOUND, f"{repo} has no file {call.filename!r} at {call.revision!r}. Check the file name"
        )
    return None


def _repo_not_found(call: HubCall) -> HubProblem:
    if call.token is None:
        return HubProblem(
            Kind.REPO_NOT_FOUND,
            f"{call.repo_id} was not found at {call.endpoint}. Check the name and HF_ENDPOINT; if it is private, set "
            f"HF_TOKEN to a read token of an account that can see it ({TOKENS_PAGE})",
        )
    return HubProblem(
        Kind.REPO_NOT_FOUND,
        f"{call.repo_id} was not found at {call.endpoint}, or HF_TOKEN's account cannot read it. Check the name, "
        "HF_ENDPOINT and the token's access",
    )


def _status(error: BaseException, call: HubCall) -> HubProblem | None:
    if isinstance(error, FileMetadataError):
        return HubProblem(
            Kind.NOT_A_HUB,
            f"{call.endpoint} does not answer like a Hugging Face Hub ({_first_line(error)}). Check HF_ENDPOINT",
        )
    if not isinstance(error, HfHubHTTPError) or error.response is None:
        return None
    status = error.response.status_code
    if status == 401:
        return HubProblem(
            Kind.TOKEN_REFUSED,
            f"The Hugging Face Hub at {call.endpoint} refused HF_TOKEN (invalid or expired). Create a read token at "
            f"{TOKENS_PAGE} and set HF_TOKEN to it",
        )
    if status == 403:
        return HubProblem(
            Kind.FORBIDDEN,
            f"The Hugging Face Hub refused HF_TOKEN access to {call.repo_id} (403). Use a token with read access "
            f"({TOKENS_PAGE})",
        )
    if status == 429 or status >= 500:
        return HubProblem(
            Kind.UNAVAILABLE,
            f"The Hugging Face Hub at {call.endpoint} answered {status} for {call.subject}. Try again later",
        )
    return HubProblem(
        Kind.NOT_A_HUB,
        f"{call.endpoint} answered {status} for {call.repo_id}, which a Hugging Face Hub would not. Check HF_ENDPOINT",
    )


def _network(error: BaseException, call: HubCall) -> HubProblem | None:
    if isinstance(error, OfflineModeIsEnabled):
        return HubProblem(Kind.OFFLINE, f"HF_HUB_OFFLINE is set, so {call.subject} cannot be downloaded. Unset it")
    reason = f"{type(error).__name__}: {_first_line(error)}"
    broken = isinstance(error, _INTERRUPTIONS) or (
        isinstance(error, OSError) and str(error).startswith("Consistency check failed")
    )
    if call.transferring and broken:
        at = f" at {call.filename}" if call.filename else ""
        return HubProblem(
            Kind.INTERRUPTED, f"Downloading {call.subject} from {call.repo_id} was interrupted{at} ({reason})"
        )
    if isinstance(error, httpx2.TransportError):
        return HubProblem(
            Kind.UNREACHABLE,
            f"Cannot reach the Hugging Face Hub at {call.endpoint} to download {call.subject} ({reason}). Check the "
            "network and HF_ENDPOINT",
        )
    return None


def _disk(error: BaseException, call: HubCall) -> HubProblem | None:
    if call.folder is None or not isinstance(error, OSError):
        return None
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return HubProblem(
            Kind.DISK_FULL, f"The disk of {call.folder} is full while downloading {call.subject}. Free some space"
        )
    if isinstance(error, PermissionError):
        return HubProblem(Kind.NOT_WRITABLE, f"Cannot write in {call.folder} ({error.strerror})")
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


def _scrub(text: str, token: str | None) -> str:
    # Our words never include the token, but library text quoted in them is not ours to vouch for.
    return text.replace(token, "***") if token else text
