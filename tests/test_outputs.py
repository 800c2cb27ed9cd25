"""Output folders: one per prediction under the process's folder, removed once Cog has surely read them, and
all of it when the process exits (generation/outputs.py)."""

from __future__ import annotations

import subprocess
import sys

from generation.outputs import OutputFolders
from testkit.cog_server import REPO_ROOT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_prediction_gets_its_own_folder_and_old_ones_go(tmp_path):
    clock = Clock()
    folders = OutputFolders(tmp_path / "flux-outputs-1", keep_seconds=10, clock=clock)
    first = folders.new()
    (first / "out-0.webp").write_bytes(b"x")
    clock.now += 9.9
    second = folders.new()
    assert first != second and first.parent == second.parent == folders.root
    assert (first / "out-0.webp").exists(), "Cog may still be reading it"
    clock.now += 0.1
    third = folders.new()
    assert not first.exists() and second.exists() and third.exists()
    folders.remove_all()
    assert not folders.root.exists()


def test_the_folder_goes_when_the_process_exits(tmp_path):
    root = tmp_path / "flux-outputs-2"
    code = (
        "import sys; from pathlib import Path; from generation.outputs import OutputFolders; "
        f"(OutputFolders(Path({str(root)!r})).new() / 'out-0.png').write_bytes(b'x')"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
    assert not root.exists() and list(tmp_path.iterdir()) == []
