"""Run one prediction like `cog predict`, without Docker: in this process, or against a running server.

    script/predict -i prompt="a photo of TOK" -i num_outputs=2 -i image=@photo.jpg
    script/predict --url http://127.0.0.1:5000 -i prompt="a photo of TOK"

Values given with -i are typed from the OpenAPI input schema (the one the Cog server validates
against), checked against it (ranges, enums, required), and `@file` becomes a file input. Outputs
are written to the current folder as output.0.webp, output.1.webp, ... like the cog CLI.
"""

from __future__ import annotations

import argparse
import base64
import copy
import importlib
import json
import mimetypes
import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import jsonschema

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT_DIR = REPO_ROOT / "script"
# The repo root first, so `predict` is the predictor module; script/ only for the schema builder.
sys.path[:] = [str(REPO_ROOT), *(p for p in sys.path if Path(p or ".").resolve() != SCRIPT_DIR), str(SCRIPT_DIR)]

from openapi_schema import build_schema, default_target  # noqa: E402


class UsageError(Exception):
    """Bad command-line input: printed without a traceback."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="script/predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input; VALUE=@path sends a local file",
    )
    parser.add_argument("--json", metavar="FILE", help="inputs as a JSON object (- for stdin)")
    parser.add_argument("--url", help="a running Cog server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--target", help="predictor for in-process runs (default: cog.yaml's run:)")
    parser.add_argument("-o", "--output", default="output", help="output file prefix (default: output)")
    return parser.parse_args(argv)


def input_schema(schema: dict) -> dict:
    """The Input component with its enum $refs inlined, ready for jsonschema."""
    components = schema["components"]["schemas"]
    resolved = copy.deepcopy(components["Input"])
    for prop in resolved["properties"].values():
        for ref in prop.pop("allOf", []):
            prop.update(components[ref["$ref"].rsplit("/", 1)[1]])
    return resolved


def typed_value(name: str, raw: str, prop: dict):
    kind = prop.get("type")
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "boolean":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw


def collect_inputs(args: argparse.Namespace, schema: dict) -> dict:
    properties = schema["properties"]
    values = {}
    if args.json:
        text = sys.stdin.read() if args.json == "-" else Path(args.json).read_text()
        values.update(json.loads(text))
    for item in args.input:
        name, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"-i {item!r}: expected NAME=VALUE")
        if name not in properties:
            raise UsageError(f"unknown input {name!r}; inputs are: {', '.join(properties)}")
        values[name] = typed_value(name, raw, properties[name])
    return values


def validate(values: dict, schema: dict) -> None:
    validator = jsonschema.Draft7Validator({k: v for k, v in schema.items() if k != "title"})
    errors = sorted(validator.iter_errors(values), key=lambda e: list(e.path))
    if errors:
        lines = [f"{'.'.join(map(str, e.path)) or 'input'}: {e.message}" for e in errors]
        raise UsageError("invalid input:\n  " + "\n  ".join(lines))


def file_inputs(values: dict, schema: dict) -> list[str]:
    return [n for n in values if schema["properties"][n].get("format") == "uri"]


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def local_file(value: str) -> Path:
    path = Path(value[1:]).expanduser()
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    return path


def output_path(prefix: str, index: int, suffix: str) -> Path:
    return Path(f"{prefix}.{index}{suffix}")


def run_in_process(args: argparse.Namespace, values: dict, schema: dict) -> list[Path]:
    from cog import Path as CogPath

    for name in file_inputs(values, schema):
        value = values[name]
        values[name] = CogPath(local_file(value)) if value.startswith("@") else CogPath.validate(value)
    for name, prop in schema["properties"].items():
        values.setdefault(name, prop.get("default"))
    module_name, class_name = (args.target or default_target()).split(":")
    predictor = getattr(importlib.import_module(module_name.removesuffix(".py")), class_name)()
    from generation.errors import UserInputError

    started = time.perf_counter()
    try:
        predictor.setup(weights=os.environ.get("COG_WEIGHTS"))
        print(f"setup done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        outputs = predictor.predict(**values)
    except UserInputError as error:  # the user's mistake: the message, not a traceback
        raise UsageError(str(error)) from None
    written = []
    for index, produced in enumerate(outputs):
        target = output_path(args.output, index, Path(produced).suffix)
        shutil.copyfile(produced, target)
        written.append(target)
    return written


def run_on_server(args: argparse.Namespace, values: dict, schema: dict) -> list[Path]:
    for name in file_inputs(values, schema):
        if values[name].startswith("@"):
            values[name] = data_uri(local_file(values[name]))
    response = httpx.post(f"{args.url.rstrip('/')}/predictions", json={"input": values}, timeout=None)
    body = response.json()
    if response.status_code != 200:
        raise UsageError(f"HTTP {response.status_code}: {json.dumps(body)}")
    if body.get("status") != "succeeded":
        raise UsageError(f"prediction {body.get('status')}: {body.get('error')}\n{body.get('logs') or ''}")
    written = []
    for index, item in enumerate(body["output"]):
        data, suffix = fetch_output(item)
        target = output_path(args.output, index, suffix)
        target.write_bytes(data)
        written.append(target)
    return written


def fetch_output(item: str) -> tuple[bytes, str]:
    if item.startswith("data:"):
        header, _, payload = item.partition(",")
        mime = header[5:].split(";")[0]
        return base64.b64decode(payload), mimetypes.guess_extension(mime) or ""
    response = httpx.get(item, follow_redirects=True, timeout=60)
    response.raise_for_status()
    return response.content, Path(item.split("?")[0]).suffix


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.url:
            schema_doc = httpx.get(f"{args.url.rstrip('/')}/openapi.json", timeout=30).json()
        else:
            schema_doc = build_schema(args.target or default_target())
        schema = input_schema(schema_doc)
        values = collect_inputs(args, schema)
        validate(values, schema)
        written = run_on_server(args, values, schema) if args.url else run_in_process(args, values, schema)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"Written output to: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
