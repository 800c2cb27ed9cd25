"""The public contract: both input schemas match the seed pages to the letter, the committed
`.cog/openapi_schema.json` matches predict.py, and cog.yaml is a valid, pinned Cog config.

The seed pages and cog's cog.yaml JSON schema are copied into tests/data (CI may lack ../shared); when
../shared is there, the copies must still equal it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SEEDS = DATA / "seeds"
SHARED = REPO_ROOT.parent / "shared"
COMMITTED_SCHEMA = REPO_ROOT / ".cog" / "openapi_schema.json"

# Seeds 000-002 are trained-LoRA model pages, 003-004 hotswap pages (see docs/DESIGN.md, "Schemas").
PREDICTOR_OF_SEED = {"000": "TrainedPredictor", "001": "TrainedPredictor", "002": "TrainedPredictor"}
PREDICTOR_OF_SEED |= {"003": "Predictor", "004": "Predictor"}
SEED_FILES = sorted(SEEDS.glob("*.txt"))
INPUT_COUNT = {"TrainedPredictor": 20, "Predictor": 21}
FILE_INPUTS = {"image", "mask"}
OUTPUT = {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}}


def _load_generator():
    spec = importlib.util.spec_from_file_location("openapi_schema", REPO_ROOT / "script" / "openapi_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    """The OpenAPI document of each predictor, built once (importing predict.py takes seconds)."""
    return {name: generator.build_schema(f"predict.py:{name}") for name in INPUT_COUNT}


# --------------------------------------------------------------------------------------------------
# Seed pages: two renderings of Replicate's input schema
# --------------------------------------------------------------------------------------------------


@dataclass
class SeedField:
    """What one rendering shows of an input; None where that rendering does not show the thing."""

    name: str
    type: str  # markdown: string/integer/number/boolean; table: also "string (enum)" and "None"
    description: str
    required: bool | None = None  # markdown only
    default: str | None = None  # table only: the text in the "Default value" column
    minimum: str | None = None  # table only
    maximum: str | None = None  # table only
    options: list[str] | None = None  # table only, for "string (enum)"


@dataclass
class SeedPage:
    path: Path
    rendering: str  # "markdown" or "table"
    fields: list[SeedField] = field(default_factory=list)
    output: dict[str, Any] | None = None

    @property
    def predictor(self) -> str:
        return PREDICTOR_OF_SEED[self.path.name[:3]]


MARKDOWN_INPUT = re.compile(r"^- (?P<name>\w+) \((?P<req>required|optional)\): (?P<desc>.*) \((?P<type>\w+)\)$")
TABLE_TYPES = {"string", "integer", "number", "boolean", "string (enum)", "None"}
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def parse_markdown(path: Path, text: str) -> SeedPage:
    """`- name (required|optional): description (type)` lines under `## Model inputs`."""
    inputs = text.split("## Model inputs", 1)[1].split("## Model output schema", 1)[0]
    page = SeedPage(path, "markdown")
    for line in inputs.strip().splitlines():
        m = MARKDOWN_INPUT.match(line)
        assert m, f"{path.name}: unparsed input line {line!r}"
        page.fields.append(SeedField(m["name"], m["type"], m["desc"], required=m["req"] == "required"))
    after = text.split("## Model output schema", 1)[1]
    page.output, _ = json.JSONDecoder().raw_decode(after[after.index("{") :])
    return page


def parse_table(path: Path, text: str) -> SeedPage:
    """The web table: per field a name line, a type line, then default / Min / Max / Options / description."""
    body = text.split("Field Type Default value Description", 1)[1]
    table, output = body.split("\nOutput schema\n", 1)
    lines = [line.strip() for line in table.splitlines() if line.strip()]

    def starts_field(i: int) -> bool:
        return i + 1 < len(lines) and IDENTIFIER.match(lines[i]) is not None and lines[i + 1] in TABLE_TYPES

    page = SeedPage(path, "table")
    i = 0
    while i < len(lines):
        assert starts_field(i), f"{path.name}: expected a field name and type at {lines[i : i + 2]!r}"
        name, type_ = lines[i], lines[i + 1]
        i += 2
        cells: list[str] = []
        while i < len(lines) and not starts_field(i):
            cells.append(lines[i])
            i += 1
        seed = SeedField(name, type_, description="")
        rest: list[str] = []
        cells_iter = iter(cells)
        for cell in cells_iter:
            if cell.startswith("Min: "):
                seed.minimum = cell.removeprefix("Min: ")
            elif cell.startswith("Max: "):
                seed.maximum = cell.removeprefix("Max: ")
            elif cell == "Options:":
                seed.options = next(cells_iter).split(", ")
            else:
                rest.append(cell)
        assert len(rest) in (1, 2), f"{path.name}: {name}: cannot tell default from description in {rest!r}"
        seed.default = rest[0] if len(rest) == 2 else None
        seed.description = rest[-1]
        page.fields.append(seed)
    schema_text = output.split("\nSchema\n", 1)[1]
    page.output = ast.literal_eval(schema_text.strip())
    return page


def parse_seed(path: Path) -> SeedPage:
    text = path.read_text()
    return parse_markdown(path, text) if "## Model inputs" in text else parse_table(path, text)


PAGES = [parse_seed(path) for path in SEED_FILES]


def page_id(page: SeedPage) -> str:
    return f"{page.path.name[:3]}-{page.rendering}-{page.predictor}"


def page_text(value: Any) -> str:
    """How a JSON value appears on a Replicate page: Python's str for booleans, JSON for numbers."""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    return json.dumps(value)


def ordered_properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    properties = schema["components"]["schemas"]["Input"]["properties"]
    return sorted(properties.items(), key=lambda item: item[1]["x-order"])


def enum_of(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any] | None:
    """The enum component an input refers to (choices), or None."""
    if "allOf" not in prop:
        return None
    [ref] = prop["allOf"]
    return schema["components"]["schemas"][ref["$ref"].removeprefix("#/components/schemas/")]


def resolved_type(schema: dict[str, Any], prop: dict[str, Any]) -> str:
    enum = enum_of(schema, prop)
    return enum["type"] if enum else prop["type"]


# --------------------------------------------------------------------------------------------------
# (a) the committed schema is what the generator writes for cog.yaml's predictor
# --------------------------------------------------------------------------------------------------


def test_committed_openapi_schema_is_up_to_date(schemas):
    expected = generator.render(schemas["Predictor"])
    assert COMMITTED_SCHEMA.exists(), "run `python script/openapi_schema.py` and commit .cog/openapi_schema.json"
    assert COMMITTED_SCHEMA.read_text() == expected, (
        ".cog/openapi_schema.json is stale: run `python script/openapi_schema.py` (the Cog server validates "
        "requests against this file)"
    )
    assert generator.is_current(COMMITTED_SCHEMA, "predict.py:Predictor"), (
        ".cog/openapi_schema.source-sha256 is stale: run `python script/openapi_schema.py` (script/predict and "
        "script/serve rebuild the schema on every start while it is)"
    )


def test_a_schema_is_rebuilt_by_its_stamp_not_by_file_times(schemas, tmp_path, monkeypatch):
    """`--if-stale` (script/serve) and script/predict trust a schema whose stamp matches predict.py's content, however
    old the file looks (a git clone writes predict.py after .cog/), and rebuild one whose stamp does not."""
    monkeypatch.setattr(generator, "build_schema", lambda target: schemas["Predictor"])
    schema, args = tmp_path / "openapi_schema.json", ["--target", "predict.py:Predictor", "--if-stale"]
    assert generator.main([*args, "--output", str(schema)]) == 0
    assert schema.read_text() == COMMITTED_SCHEMA.read_text()
    assert generator.stamp_path(schema).read_text() == generator.stamp_path(COMMITTED_SCHEMA).read_text()

    schema.write_text("kept")
    os.utime(schema, (0, 0))  # older than predict.py: times do not matter
    assert generator.main([*args, "--output", str(schema)]) == 0 and schema.read_text() == "kept"

    generator.stamp_path(schema).write_text("0" * 64 + "  predict.py:Predictor\n")  # built from another predict.py
    assert generator.main([*args, "--output", str(schema)]) == 0
    assert schema.read_text() == COMMITTED_SCHEMA.read_text()


def test_generator_check_works_from_another_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "script" / "openapi_schema.py"), "--check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_generator_check_reports_a_stale_file(schemas, tmp_path, monkeypatch, capsys):
    stale = tmp_path / "openapi_schema.json"
    stale.write_text(COMMITTED_SCHEMA.read_text().replace('"maximum": 1440', '"maximum": 2048'))
    monkeypatch.setattr(generator, "DEFAULT_OUTPUT", stale)
    monkeypatch.setattr(generator, "build_schema", lambda target: schemas["Predictor"])
    assert generator.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert '-            "maximum": 2048' in out and '+            "maximum": 1440' in out


def test_generator_writes_the_schema_of_any_target(schemas, tmp_path, monkeypatch):
    monkeypatch.setattr(generator, "build_schema", lambda target: schemas[target.split(":")[1]])
    output = tmp_path / "sub" / "trained.json"
    assert generator.main(["--target", "predict.py:TrainedPredictor", "--output", str(output)]) == 0
    assert json.loads(output.read_text()) == schemas["TrainedPredictor"]
    assert output.read_text().endswith("}\n")


def test_document_shape_is_what_cog_build_writes(schemas):
    for schema in schemas.values():
        assert list(schema) == ["openapi", "info", "paths", "components"]
        assert schema["openapi"] == "3.0.2"
        assert schema["info"] == {"title": "Cog", "version": cog_config()["build"]["sdk_version"]}
        assert list(schema["paths"]) == ["/", "/health-check", "/predictions", "/predictions/{prediction_id}/cancel"]
        enums = [name for name, prop in ordered_properties(schema) if "allOf" in prop]
        assert list(schema["components"]["schemas"]) == [
            "Input",
            "Output",
            *enums,
            "PredictionRequest",
            "PredictionResponse",
            "Status",
            "HTTPValidationError",
            "ValidationError",
        ]
        for name in enums:
            enum = schema["components"]["schemas"][name]
            assert list(enum) == ["title", "description", "enum", "type"]
            assert enum["title"] == name and enum["description"] == "An enumeration."
        for name, prop in ordered_properties(schema):
            assert "title" in prop or "allOf" in prop
            if "title" in prop:
                assert prop["title"] == " ".join(word.capitalize() for word in name.split("_"))


# --------------------------------------------------------------------------------------------------
# (b) both input schemas match the seed pages to the letter
# --------------------------------------------------------------------------------------------------


def test_seed_pages_parse_completely():
    assert [p.path.name[:3] for p in PAGES] == ["000", "001", "002", "003", "004"]
    assert [p.rendering for p in PAGES] == ["markdown", "markdown", "table", "table", "table"]
    trained = [f.name for f in PAGES[0].fields]
    assert len(trained) == 20
    hotswap = trained[: trained.index("megapixels") + 1] + ["replicate_weights"] + trained[-3:]
    for page in PAGES:
        assert len(page.fields) == INPUT_COUNT[page.predictor]
        assert [f.name for f in page.fields] == (trained if page.predictor == "TrainedPredictor" else hotswap)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_names_order_types_and_descriptions(page, schemas):
    schema = schemas[page.predictor]
    props = ordered_properties(schema)
    assert [name for name, _ in props] == [f.name for f in page.fields]
    assert [prop["x-order"] for _, prop in props] == list(range(len(props)))
    for seed, (name, prop) in zip(page.fields, props, strict=True):
        assert prop.get("description") == seed.description, name
        if seed.type == "string (enum)":
            assert enum_of(schema, prop) is not None and resolved_type(schema, prop) == "string", name
        elif seed.type == "None":  # the page shows no type for an allOf/$ref property: an enum
            assert "type" not in prop and resolved_type(schema, prop) == "string", name
        else:
            assert resolved_type(schema, prop) == seed.type, name
            if page.rendering == "table":
                assert enum_of(schema, prop) is None, f"{name}: the page shows no options"
        assert prop.get("format") == ("uri" if name in FILE_INPUTS else None), name


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_required_inputs(page, schemas):
    required = schemas[page.predictor]["components"]["schemas"]["Input"]["required"]
    if page.rendering == "markdown":
        assert required == [f.name for f in page.fields if f.required]
    assert required == ["prompt"]  # the table does not mark required inputs; prompt alone has no default


@pytest.mark.parametrize("page", [p for p in PAGES if p.rendering == "table"], ids=page_id)
def test_defaults_enums_and_bounds(page, schemas):
    schema = schemas[page.predictor]
    props = dict(ordered_properties(schema))
    for seed in page.fields:
        prop = props[seed.name]
        if seed.default is None:
            assert "default" not in prop, seed.name
        else:
            assert "default" in prop and page_text(prop["default"]) == seed.default, seed.name
        enum = enum_of(schema, prop)
        if seed.options is not None:
            assert enum["enum"] == seed.options, seed.name
        if seed.maximum is not None:
            assert page_text(prop.get("maximum")) == seed.maximum, seed.name
        else:
            assert "maximum" not in prop, seed.name
        if seed.minimum is not None:
            assert page_text(prop.get("minimum")) == seed.minimum, seed.name
        elif seed.maximum is not None:
            # Replicate's page leaves out "Min: 0" (a falsy minimum); predict.py says ge=0 there.
            assert prop.get("minimum", 0) == 0, seed.name
        else:
            assert "minimum" not in prop, seed.name


def test_hotswap_enums_are_the_trained_pages_options(schemas):
    """The hotswap pages render enums without options; they share the trained page's (same implementation)."""
    [trained_table] = [p for p in PAGES if p.rendering == "table" and p.predictor == "TrainedPredictor"]
    options = {f.name: f.options for f in trained_table.fields if f.options is not None}
    schema = schemas["Predictor"]
    enums = {name: enum_of(schema, prop)["enum"] for name, prop in ordered_properties(schema) if "allOf" in prop}
    assert enums == options
    hotswap_enum_inputs = {f.name for p in PAGES if p.predictor == "Predictor" for f in p.fields if f.type == "None"}
    assert hotswap_enum_inputs == set(options)


def test_example_input_on_the_trained_page_is_valid(schemas):
    """Seed 001 carries a real request; it must pass the same schema the Cog server validates against."""
    text = (SEEDS / "001_4ddf0014986bdd10.txt").read_text()
    example = text.split("#### Input", 1)[1]
    request, _ = json.JSONDecoder().raw_decode(example[example.index("{") :])
    schema = schemas["TrainedPredictor"]
    document = {"$ref": "#/components/schemas/Input", "components": schema["components"]}
    jsonschema.Draft7Validator(document).validate(request)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(document).validate({**request, "aspect_ratio": "7:5"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(document).validate({**request, "num_outputs": 5})


# --------------------------------------------------------------------------------------------------
# (c) the output schema
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_output_is_a_list_of_files(page, schemas):
    assert schemas[page.predictor]["components"]["schemas"]["Output"] == OUTPUT
    assert page.output == OUTPUT


# --------------------------------------------------------------------------------------------------
# (d) cog.yaml and the pins
# --------------------------------------------------------------------------------------------------


def cog_config() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())


def requirement_lines(name: str) -> list[str]:
    lines = (REPO_ROOT / name).read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def test_cog_yaml_is_valid():
    config_schema = json.loads((DATA / "cog-config-schema-v1.0.json").read_text())
    jsonschema.Draft7Validator(config_schema).validate(cog_config())


def test_cog_yaml_build_settings():
    config = cog_config()
    build = config["build"]
    assert config["run"] == "predict.py:Predictor"
    assert build["gpu"] is True
    assert build["python_version"] == "3.11"
    assert build["python_requirements"] == "requirements.txt"
    pins = dict(line.split("==", 1) for line in requirement_lines("requirements-dev.txt") if "==" in line)
    assert build["sdk_version"] == pins["cog"] == pins["coglet"]


def test_runtime_requirements_are_exact_pins():
    lines = requirement_lines("requirements.txt")
    assert lines
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.+!-]*", line), line


def test_copies_of_shared_files_are_current():
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside the repo")
    shared_seeds = sorted((SHARED / "seeds").glob("*.txt"))
    assert [p.name for p in SEED_FILES] == [p.name for p in shared_seeds]
    for copy, original in zip(SEED_FILES, shared_seeds, strict=True):
        assert copy.read_bytes() == original.read_bytes(), copy.name
    config_schema = SHARED / "reference" / "cog-config-schema-v1.0.json"
    assert (DATA / config_schema.name).read_bytes() == config_schema.read_bytes()
