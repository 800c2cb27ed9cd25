#!/usr/bin/env python
"""Print the prediction slots `cog build` gives a predictor: its run()'s `@cog.concurrent(max=N)`, else 1.

`cog build` reads the decorator from the source (an integer literal) and bakes it into the image as
COG_MAX_CONCURRENCY; a bare `python -m cog.server.http`, as script/serve and the tests run it, never reads it and
serves one slot. So they set COG_MAX_CONCURRENCY from this, and the server runs as the image would. The source is
read, not imported (importing predict.py loads torch: seconds, where script/serve answers in one).

Usage: python script/cog_concurrency.py [predict.py:Predictor]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def max_concurrency(target: str = "predict.py:Predictor", root: Path = REPO_ROOT) -> int:
    """N of `@cog.concurrent(max=N)` on the run() (or deprecated predict()) of `file.py:Class`; 1 without it."""
    file_part, _, class_name = target.partition(":")
    classes = {
        node.name: node for node in ast.parse((root / file_part).read_text()).body if isinstance(node, ast.ClassDef)
    }
    while class_name in classes:  # a class without its own run() uses its base's (a base in the same file)
        node = classes[class_name]
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in ("run", "predict"):
                return _decorator_max(item)
        class_name = next((base.id for base in node.bases if isinstance(base, ast.Name)), "")
    return 1


def _decorator_max(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) in ("cog.concurrent", "concurrent"):
            for keyword in decorator.keywords:
                if keyword.arg == "max" and isinstance(keyword.value, ast.Constant):
                    return int(keyword.value.value)
    return 1


if __name__ == "__main__":
    print(max_concurrency(*sys.argv[1:2]))
