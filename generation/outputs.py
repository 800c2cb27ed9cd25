"""Where a prediction's output files are written, and when they are removed.

Each process writes under one folder of its own, `$TMPDIR/flux-outputs-<pid>/` (`ServerConfig.output_dir`), and
each prediction into a fresh subfolder of it, so two predictions never share a file: one can be saving while
Cog still reads the previous one's files (the server runs several predictions at once; one is on the GPU).

When to remove them: Cog (coglet 0.23.1) reads every file run() returns right after run() returns, before it
answers the request, and then never again; but it tells the predictor nothing when it has. So a prediction's
folder is kept for `KEEP_SECONDS` after it was written (Cog reads within milliseconds; the margin covers a
worker starved of CPU) and removed by the first prediction that saves after that. The whole folder goes when
the process exits (Cog's worker exits normally when the server stops, so `atexit` runs), which also covers
`script/predict`, whose one prediction is read by the script itself before it exits.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

KEEP_SECONDS = 10.0


class OutputFolders:
    """A fresh folder per prediction under `root`; old ones removed as new ones are made, all of them at exit."""

    def __init__(self, root: Path, keep_seconds: float = KEEP_SECONDS, clock=time.monotonic):
        self.root = root
        self.keep_seconds = keep_seconds
        self._clock = clock
        self._written: deque[tuple[float, Path]] = deque()  # (when made, folder), oldest first
        self._lock = threading.Lock()  # tests and scripts may save from several threads
        atexit.register(self.remove_all)

    def new(self) -> Path:
        """An empty folder for one prediction's files; folders made more than `keep_seconds` ago are removed."""
        with self._lock:
            now = self._clock()
            while self._written and now - self._written[0][0] >= self.keep_seconds:
                shutil.rmtree(self._written.popleft()[1], ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix="prediction-", dir=self.root))
            self._written.append((now, folder))
        return folder

    def remove_all(self) -> None:
        """Remove the process's outputs folder and everything in it."""
        with self._lock:
            self._written.clear()
            shutil.rmtree(self.root, ignore_errors=True)
