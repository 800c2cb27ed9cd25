"""Generated paths stay out of git and out of the Docker build context.

`cog push` sends the repository folder to the image build; without a .dockerignore that would include the
virtualenv (~1.4 GB), downloaded base weights (~58 GB), the LoRA cache and the tiny stand-ins. The folders the
scripts create are found in the scripts themselves (every `$repo/<name>` they write that git does not track),
plus what the tools write (caches, outputs), so a new generated folder cannot be forgotten in one of the files.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from testkit.cog_server import REPO_ROOT

TOOL_OUTPUTS = [  # written by python, pytest, ruff and script/predict (outputs go to the current folder)
    "generation/__pycache__/service.cpython-311.pyc",
    ".pytest_cache/v/cache/nodeids",
    ".ruff_cache/CACHEDIR.TAG",
    "output.0.webp",
    "output.1.png",
]


def script_folders() -> list[str]:
    """Every `$repo/<name>` the shell scripts use that git does not track: what they generate."""
    tracked_scripts = subprocess.run(["git", "ls-files", "script"], cwd=REPO_ROOT, capture_output=True, text=True)
    shell = [REPO_ROOT / name for name in tracked_scripts.stdout.splitlines() if not name.endswith(".py")]
    text = "\n".join(path.read_text() for path in shell)  # tracked files only: never a __pycache__ left by a run
    names = sorted(set(re.findall(r"\$repo/([A-Za-z0-9_.-]+)", text)))
    tracked = subprocess.run(["git", "ls-files", *names], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    tracked_tops = {line.split("/")[0] for line in tracked.splitlines()}
    return [name for name in names if name not in tracked_tops]


def docker_ignores(path: str) -> bool:
    """Docker's rule: patterns are anchored at the context root, `**` spans folders, `*` and `?` do not,
    a pattern that matches a folder excludes what is inside it, and the last matching line (`!` re-includes)
    wins."""
    ignored = False
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = _docker_regex(pattern.lstrip("!").strip("/"))
        parts = path.split("/")
        if any(regex.fullmatch("/".join(parts[:end])) for end in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def _docker_regex(pattern: str) -> re.Pattern:
    out = []
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out.append({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token)))
    return re.compile("".join(out))


def git_ignores(path: str, tmp_path_factory) -> bool:
    """Asked of an empty repository holding only our .gitignore, so what exists in the checkout (a .venv that is
    a link, an already-tracked file) cannot change the answer."""
    bare = tmp_path_factory.getbasetemp() / "gitignore-only"
    if not (bare / ".git").exists():
        bare.mkdir(exist_ok=True)
        subprocess.run(["git", "init", "-q", str(bare)], check=True)
        (bare / ".gitignore").write_text((REPO_ROOT / ".gitignore").read_text())
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=bare).returncode == 0


def test_the_scripts_generate_the_expected_folders():
    assert {".venv", "model-cache", "weights-cache", ".tiny-weights", ".serve"} <= set(script_folders())


@pytest.mark.parametrize("path", [*(f"{name}/some/file" for name in script_folders()), *TOOL_OUTPUTS])
def test_generated_paths_are_ignored_by_git_and_docker(path, tmp_path_factory):
    assert git_ignores(path, tmp_path_factory), f"{path} is not in .gitignore"
    assert docker_ignores(path), f"{path} is not in .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        "predict.py",
        "cog.yaml",
        "requirements.txt",
        ".cog/openapi_schema.json",
        "generation/service.py",
        "weights/tiny.py",
    ],
)
def test_what_the_image_needs_is_not_ignored(path):
    assert not docker_ignores(path)
