"""Run one prediction like `cog predict`, without Docker: in this process, or on a running Cog server.

    script/predict -i prompt="a photo of TOK" -i num_outputs=2 -i image=@photo.jpg
    script/predict --json @inputs.json              # or --json @- (stdin), or --json '{"prompt": "..."}'
    script/predict --url http://127.0.0.1:5000 -i prompt="a photo of TOK"

As with the cog CLI: -i values are typed from the OpenAPI input schema (the one the Cog server validates
against) and checked against it (ranges, enums, required); `@file` is a local file, for -i and as a value in
--json (-i wins over --json for the same input). Outputs are written as output.0.webp, output.1.webp, ...;
`-o name.png` writes name.0.png, name.1.png (the extension given is kept, as cog keeps it), `-o name` writes
name.0.webp, `-o folder/` writes folder/output.0.webp. The logs (seed, steps, stage times) go to stderr while
the prediction runs, also from a server (--url); stdout lists the files written.

A mistake the user can fix (invalid input, a refused LoRA, missing weights, no server at --url, a failed
prediction) is one `error:` line and exit status 1; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import importlib
import inspect
import json
import mimetypes
import os
import sys
import time
from pathlib import Path

import httpx2
import jsonschema

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT_DIR = REPO_ROOT / "script"
# The repo root first, so `predict` is the predictor module; script/ only for the schema builder and the client.
sys.path[:] = [str(REPO_ROOT), *(p for p in sys.path if Path(p or ".").resolve() != SCRIPT_DIR), str(SCRIPT_DIR)]

from cog_client import ClientError, CogClient  # noqa: E402
from openapi_schema import build_schema, default_target, is_current  # noqa: E402

SAME_FORMAT = {".jpeg": ".jpg"}
COMMITTED_SCHEMA = REPO_ROOT / ".cog" / "openapi_schema.json"


class UsageError(Exception):
    """Bad command-line input: printed without a traceback."""


def user_errors() -> tuple[type[Exception], ...]:
    """Everything a user causes and can fix; anything else is a bug and keeps its traceback. Imported only when
    asked: the server's packages pull in torch (seconds), and a mistyped input must be reported at once."""
    from generation.errors import UserInputError
    from lora_loader.errors import LoraError
    from serverconfig import ConfigError
    from weights.download import WeightsDownloadError

    return UsageError, ClientError, UserInputError, LoraError, WeightsDownloadError, ConfigError


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
    parser.add_argument("--json", metavar="JSON", help="inputs as a JSON object: @file, @- for stdin, or the JSON")
    parser.add_argument("--url", help="a running Cog server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--target", help="predictor for in-process runs (default: cog.yaml's run:)")
    parser.add_argument("-o", "--output", help="output path: name.png -> name.0.png, ... (default: output)")
    return parser.parse_args(argv)


# -- inputs -----------------------------------------------------------------------------------------------


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


def json_inputs(spec: str) -> dict:
    """--json as the cog CLI reads it: `@file`, `@-` (stdin) or the JSON itself."""
    text = spec
    if spec.startswith("@"):
        source = spec[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).expanduser().read_text()
        except OSError as error:
            raise UsageError(f"--json: cannot read {source}: {error.strerror or error}") from None
    try:
        values = json.loads(text)
    except ValueError as error:
        hint = ""
        if spec == "-" or Path(spec).expanduser().is_file():
            hint = f"; to read {'stdin' if spec == '-' else 'the file'}, write --json @{spec}"
        raise UsageError(f"--json: not valid JSON ({error}){hint}") from None
    if not isinstance(values, dict):
        raise UsageError('--json: expected a JSON object of inputs, such as {"prompt": "a dog"}')
    return values


def collect_inputs(args: argparse.Namespace, schema: dict) -> dict:
    properties = schema["properties"]
    values = json_inputs(args.json) if args.json else {}
    for item in args.input:
        name, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"-i {item!r}: expected NAME=VALUE")
        values[name] = typed_value(name, raw, properties.get(name, {}))
    unknown = [name for name in values if name not in properties]
    if unknown:
        raise UsageError(f"unknown input {unknown[0]!r}; inputs are: {', '.join(properties)}")
    return values


def validate(values: dict, schema: dict) -> None:
    validator = jsonschema.Draft7Validator({k: v for k, v in schema.items() if k != "title"})
    errors = sorted(validator.iter_errors(values), key=lambda e: list(e.path))
    if errors:
        problems = [f"{'.'.join(map(str, e.path)) or 'input'}: {e.message}" for e in errors]
        raise UsageError("invalid input: " + "; ".join(problems))


def file_inputs(values: dict, schema: dict) -> list[str]:
    return [n for n in values if schema["properties"][n].get("format") == "uri" and isinstance(values[n], str)]


def local_file(value: str) -> Path:
    path = Path(value[1:]).expanduser()
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    return path


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


# -- outputs ----------------------------------------------------------------------------------------------


def output_paths(output: str | None, suffixes: list[str]) -> list[Path]:
    """Where each file of a list output goes, named as the cog CLI names them: `name.ext` -> name.0.ext (the
    given extension is kept), `name` -> name.0.<format>, an existing folder -> folder/output.0.<format>."""
    base = Path(output or "output").expanduser()
    if base.is_dir():
        base = base / "output"
    return [base.with_name(f"{base.stem}.{index}{base.suffix or suffix}") for index, suffix in enumerate(suffixes)]


def check_writable(output: str | None) -> None:
    """Fail before the prediction, not after minutes of it, when the outputs cannot be written."""
    base = Path(output or "output").expanduser()
    if output and output.endswith("/") and not base.is_dir():
        raise UsageError(f"no such folder: {output}")
    folder = base if base.is_dir() else base.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write outputs to {folder}: no such folder, or not writable")


def write_outputs(output: str | None, files: list[tuple[bytes, str]]) -> list[Path]:
    written = []
    for path, (data, suffix) in zip(output_paths(output, [s for _, s in files]), files, strict=True):
        try:
            path.write_bytes(data)
        except OSError as error:
            raise UsageError(f"cannot write {path}: {error.strerror or error}") from None
        if SAME_FORMAT.get(path.suffix.lower(), path.suffix.lower()) != SAME_FORMAT.get(suffix, suffix):
            print(f"note: {path} holds {suffix[1:]} data (the name comes from -o, as with cog)", file=sys.stderr)
        written.append(path)
    return written


# -- running ----------------------------------------------------------------------------------------------


def load_schema(args: argparse.Namespace) -> dict:
    if args.url:
        return CogClient(args.url, print_logs).schema()
    target = args.target or default_target()
    if not (REPO_ROOT / target.partition(":")[0]).is_file():
        raise UsageError(f"--target {target}: no such file in {REPO_ROOT}")
    if target == default_target() and is_current(COMMITTED_SCHEMA, target):
        # The schema the Cog server validates with, while its stamp says it was built from predict.py as it is now
        # (script/openapi_schema.py); tests/test_schema.py keeps the committed pair true.
        return json.loads(COMMITTED_SCHEMA.read_text())
    return build_schema(target)


def run_in_process(args: argparse.Namespace, values: dict, schema: dict) -> list[tuple[bytes, str]]:
    from cog import Path as CogPath

    for name in file_inputs(values, schema):
        value = values[name]
        values[name] = CogPath(local_file(value)) if value.startswith("@") else CogPath.validate(value)
    for name, prop in schema["properties"].items():
        values.setdefault(name, prop.get("default"))
    module_name, class_name = (args.target or default_target()).split(":")
    predictor = getattr(importlib.import_module(module_name.removesuffix(".py")), class_name)()
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the logs, as from a server; stdout lists the files
        predictor.setup(weights=os.environ.get("COG_WEIGHTS"))
        print(f"setup done in {time.perf_counter() - started:.1f} s")
        outputs = predictor.run(**values)
        if inspect.iscoroutine(outputs):  # an async run(), as the server awaits it
            outputs = asyncio.run(outputs)
    return [(Path(produced).read_bytes(), Path(produced).suffix) for produced in outputs]


def run_on_server(args: argparse.Namespace, values: dict, schema: dict) -> list[tuple[bytes, str]]:
    for name in file_inputs(values, schema):
        if values[name].startswith("@"):
            values[name] = data_uri(local_file(values[name]))
    client = CogClient(args.url, print_logs)
    client.wait_until_ready()
    body = client.predict(values)
    return [fetch_output(item) for item in body.get("output") or []]


def fetch_output(item: str) -> tuple[bytes, str]:
    if item.startswith("data:"):
        header, _, payload = item.partition(",")
        mime = header[5:].split(";")[0]
        return base64.b64decode(payload), mimetypes.guess_extension(mime) or ""
    try:
        response = httpx2.get(item, follow_redirects=True, timeout=60)
        response.raise_for_status()
    except httpx2.HTTPError as error:
        raise ClientError(f"could not download the output {item}: {error}") from None
    return response.content, Path(item.split("?")[0]).suffix


def print_logs(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def predict(args: argparse.Namespace) -> list[Path]:
    schema = input_schema(load_schema(args))
    values = collect_inputs(args, schema)
    validate(values, schema)
    check_writable(args.output)
    files = run_on_server(args, values, schema) if args.url else run_in_process(args, values, schema)
    return write_outputs(args.output, files)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        written = predict(args)
    except Exception as error:
        if not isinstance(error, (UsageError, ClientError)) and not isinstance(error, user_errors()):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for path in written:
        print(f"Written output to: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
