#!/usr/bin/env python
"""Write `.cog/openapi_schema.json` from predict.py, as `cog build` would.

The Cog server (cog + coglet) validates every request against `.cog/openapi_schema.json` and never
writes it; the Go `cog` CLI does, at build time. This script produces the same document without the
CLI or Docker: it reads the predictor with cog's own inspector (`cog._inspector.create_predictor`)
and lays the result out the way the CLI's generator (replicate/cog `pkg/schema/openapi_spec.go`,
v0.22+) does, key for key:

- components in the order Input, Output, one enum per input with choices (named after the input,
  as-is: `aspect_ratio`), PredictionRequest, PredictionResponse, Status, HTTPValidationError,
  ValidationError; `info.version` is the cog version (the CLI writes its own, released with the SDK);
- each input: `x-order`, then `allOf: [$ref enum]` or `title` + the type's keys, `default` (left out
  when None), `nullable`, `description`, `minimum`/`maximum`, ...; numbers that are whole are
  written as JSON integers (Go marshals float64 256.0 as `256`), others as they are (0.8).

Key order inside a schema object has no meaning to a validator; the file is indented for review.

Usage (from any directory):
    python script/openapi_schema.py                       # the `run:` target of cog.yaml -> .cog/openapi_schema.json
    python script/openapi_schema.py --target predict.py:TrainedPredictor --output /tmp/trained.json
    python script/openapi_schema.py --check               # exit 1, with a diff, when the file is stale
    python script/openapi_schema.py --target T --output F --if-stale   # rebuild only when F's stamp is stale

Beside every schema it writes, a stamp (`openapi_schema.source-sha256`: the predictor file's sha256 and the target)
says what it was built from. script/predict and script/serve trust a schema whose stamp matches and rebuild one
whose stamp does not: by content, since file times say nothing after a `git clone` (which writes predict.py after
.cog/, so it always looks newer). tests/test_schema.py keeps the committed stamp true.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / ".cog" / "openapi_schema.json"

_REF = "#/components/schemas/"
_JSON = "application/json"


def stamp_path(schema_path: Path) -> Path:
    return schema_path.with_name("openapi_schema.source-sha256")


def source_stamp(target: str) -> str:
    """What a schema built now for `target` is built from: its file's sha256, then the target."""
    digest = hashlib.sha256((REPO_ROOT / target.partition(":")[0]).read_bytes()).hexdigest()
    return f"{digest}  {target}\n"


def is_current(schema_path: Path, target: str) -> bool:
    """Whether `schema_path` exists and its stamp says it was built from `target` as the file is now."""
    stamp = stamp_path(schema_path)
    return schema_path.is_file() and stamp.is_file() and stamp.read_text() == source_stamp(target)


def write_schema(path: Path, target: str) -> None:
    """The schema for `target` written to `path`, then its stamp (so a half-written pair is rebuilt next time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(build_schema(target)))
    stamp_path(path).write_text(source_stamp(target))


def default_target() -> str:
    """The predictor cog.yaml points at (`run:`, or the deprecated `predict:`)."""
    import yaml

    config = yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())
    target = config.get("run") or config.get("predict")
    if not target:
        raise SystemExit("cog.yaml names no predictor (`run:`)")
    return target


def load_predictor(target: str):
    """cog's PredictorInfo for `path/to/file.py:ClassName` (path relative to the repo root)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from cog._inspector import create_predictor

    file_part, sep, name = target.partition(":")
    if not sep or not file_part.endswith(".py") or not name:
        raise SystemExit(f"target must look like predict.py:Predictor, got {target!r}")
    module = file_part[: -len(".py")].replace("/", ".")
    with warnings.catch_warnings():
        # A target still on the deprecated BasePredictor/predict() (cog < 0.20 style) gets the same schema, unwarned.
        warnings.simplefilter("ignore", DeprecationWarning)
        return create_predictor(module, name)


def build_schema(target: str) -> dict[str, Any]:
    """The complete OpenAPI document for the predictor `target`."""
    from cog import __version__ as cog_version

    info = load_predictor(target)
    input_schema, enums = _input_schema(info)
    schemas: dict[str, Any] = {"Input": input_schema, "Output": _go_numbers(info.output.json_type())}
    schemas.update(enums)
    schemas.update(_fixed_schemas())
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": cog_version},
        "paths": _paths(),
        "components": {"schemas": schemas},
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def title_case(name: str) -> str:
    """`num_outputs` -> `Num Outputs` (the CLI's TitleCase: split on `_`, upper-case each first letter)."""
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _input_schema(info) -> tuple[dict[str, Any], dict[str, Any]]:
    from cog._adt import Repetition

    properties: dict[str, Any] = {}
    required: list[str] = []
    enums: dict[str, Any] = {}
    for name, field in sorted(info.inputs.items(), key=lambda item: item[1].order):
        if isinstance(field.default, dataclasses.Field):
            raise SystemExit(f"input {name}: default_factory is not supported by cog's schema generator")
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices:
            enums[name] = {
                "title": name,
                "description": "An enumeration.",
                "enum": [field.type.primitive.json_encode(c) for c in field.choices],
                "type": field.type.primitive.json_type().get("type", "string"),
            }
            prop["allOf"] = [{"$ref": _REF + name}]
        else:
            prop["title"] = title_case(name)
            prop.update(sorted(field.type.json_type().items()))
        nullable = field.type.repetition in (Repetition.OPTIONAL, Repetition.OPTIONAL_REPEATED)
        if field.default is not None:
            prop["default"] = field.type.json_encode(field.default)
        elif not nullable:
            required.append(name)
        if nullable:
            prop["nullable"] = True
        if field.description is not None:
            prop["description"] = field.description
        for key, value in (
            ("minimum", field.ge),
            ("maximum", field.le),
            ("minLength", field.min_length),
            ("maxLength", field.max_length),
            ("pattern", field.regex),
        ):
            if value is not None:
                prop[key] = value
        if field.deprecated:
            prop["deprecated"] = True
        properties[name] = _go_numbers(prop)

    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def _go_numbers(value: Any) -> Any:
    """Whole floats as ints, as Go's encoding/json writes float64 (256.0 -> 256; 0.8 stays 0.8)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    return value


def _fixed_schemas() -> dict[str, Any]:
    def string(title: str, **extra: str) -> dict[str, str]:
        return {"title": title, "type": "string", **extra}

    return {
        "PredictionRequest": {
            "title": "PredictionRequest",
            "type": "object",
            "properties": {"id": string("Id"), "input": {"$ref": _REF + "Input"}},
        },
        "PredictionResponse": {
            "title": "PredictionResponse",
            "type": "object",
            "properties": {
                "input": {"$ref": _REF + "Input"},
                "output": {"$ref": _REF + "Output"},
                "id": string("Id"),
                "version": string("Version"),
                "created_at": string("Created At", format="date-time"),
                "started_at": string("Started At", format="date-time"),
                "completed_at": string("Completed At", format="date-time"),
                "status": string("Status"),
                "error": string("Error"),
                "logs": string("Logs"),
                "metrics": {"title": "Metrics", "type": "object"},
            },
        },
        "Status": {
            "title": "Status",
            "description": "An enumeration.",
            "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
            "type": "string",
        },
        "HTTPValidationError": {
            "title": "HTTPValidationError",
            "type": "object",
            "properties": {
                "detail": {"title": "Detail", "type": "array", "items": {"$ref": _REF + "ValidationError"}},
            },
        },
        "ValidationError": {
            "title": "ValidationError",
            "required": ["loc", "msg", "type"],
            "type": "object",
            "properties": {
                "loc": {
                    "title": "Location",
                    "type": "array",
                    "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                },
                "msg": string("Message"),
                "type": string("Error Type"),
            },
        },
    }


def _paths() -> dict[str, Any]:
    def response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {_JSON: {"schema": schema}}}

    validation_error = response("Validation Error", {"$ref": _REF + "HTTPValidationError"})
    return {
        "/": {
            "get": {
                "summary": "Root",
                "operationId": "root__get",
                "responses": {"200": response("Successful Response", {})},
            }
        },
        "/health-check": {
            "get": {
                "summary": "Healthcheck",
                "operationId": "healthcheck_health_check_get",
                "responses": {"200": response("Successful Response", {})},
            }
        },
        "/predictions": {
            "post": {
                "summary": "Predict",
                "description": "Run a single prediction on the model",
                "operationId": "predict_predictions_post",
                "requestBody": {"content": {_JSON: {"schema": {"$ref": _REF + "PredictionRequest"}}}},
                "responses": {
                    "200": response("Successful Response", {"$ref": _REF + "PredictionResponse"}),
                    "422": validation_error,
                },
            }
        },
        "/predictions/{prediction_id}/cancel": {
            "post": {
                "summary": "Cancel",
                "operationId": "cancel_predictions__prediction_id__cancel_post",
                "parameters": [
                    {
                        "required": True,
                        "schema": {"title": title_case("prediction_id"), "type": "string"},
                        "name": "prediction_id",
                        "in": "path",
                    }
                ],
                "responses": {"200": response("Successful Response", {}), "422": validation_error},
            }
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="predictor as FILE.py:Class (default: `run:` in cog.yaml)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--output", type=Path, help="file to write (default: .cog/openapi_schema.json)")
    action.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file on disk differs")
    parser.add_argument("--if-stale", action="store_true", help="write only when the output's stamp is stale")
    args = parser.parse_args(argv)

    target = args.target or default_target()
    if args.check:
        return check(DEFAULT_OUTPUT, target)
    path = args.output or DEFAULT_OUTPUT
    if not (args.if_stale and is_current(path, target)):
        write_schema(path, target)
        print(f"wrote {path} ({target})")
    return 0


def check(path: Path, target: str) -> int:
    """0 when `path` and its stamp are what `target` gives now; else 1, with a diff of the schema."""
    text = render(build_schema(target))
    current = path.read_text() if path.exists() else ""
    if current == text and is_current(path, target):
        print(f"{path} is up to date with {target}")
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        text.splitlines(keepends=True),
        fromfile=f"{path} (on disk)",
        tofile=f"{path} (generated from {target})",
    )
    sys.stdout.writelines(diff)
    what = "is stale" if current != text else "is right but its stamp is stale"
    print(f"\n{path} {what}: run `python script/openapi_schema.py` and commit the result.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
