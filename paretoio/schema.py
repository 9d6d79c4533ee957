"""The file formats of the project, as JSON Schema files, and their checker.

``paretoio/schemas/`` holds them as package data of ``paretoio``, which both packages import:

* ``paretopipe.run.v1.schema.json``: our result files (schema ``paretopipe.run`` v1). The analysis
  reads with it, and ``paretopipe.results.validate_result`` (the writer's check) checks with it,
  so writer and reader check one definition, and a device that writes results needs only
  jsonschema for it (not the analysis's pandas). docs/results.md publishes it.
* ``paretopipe.profile.schema.json``: device profiles (schema ``paretopipe.profile``, versions 1
  and 2), checked by ``paretopipe.profiling.read_profile``; docs/predict.md explains them.
* ``upstream.schema.json``: upstream ParetoPipe's per-split metrics files and its RPC tester's
  ``consolidated_metrics.json`` (definitions ``split_metrics`` and ``consolidated``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

__all__ = ["RUN_SCHEMA", "PROFILE_SCHEMA", "UPSTREAM_SCHEMA", "load_schema", "schema_problems", "run_schema_problems"]

RUN_SCHEMA = "paretopipe.run.v1.schema.json"
UPSTREAM_SCHEMA = "upstream.schema.json"
PROFILE_SCHEMA = "paretopipe.profile.schema.json"


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """A schema of ``paretoio/schemas/`` as a dict."""
    return json.loads(resources.files("paretoio").joinpath("schemas", name).read_text("utf-8"))


@lru_cache(maxsize=None)
def _validator(name: str, definition: str | None) -> jsonschema.protocols.Validator:
    schema = load_schema(name)
    if definition is not None:  # check against one of the file's $defs
        schema = {**schema, "$ref": f"#/$defs/{definition}"}
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _where(error: jsonschema.ValidationError) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def schema_problems(doc: Any, name: str, definition: str | None = None) -> list[str]:
    """Every way ``doc`` breaks schema ``name`` (or its ``$defs/definition``), one line each
    (``$.config: 'model' is a required property``), in document order; empty when none."""
    errors = sorted(_validator(name, definition).iter_errors(doc),
                    key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_where(e)}: {e.message}" for e in errors]


def run_schema_problems(doc: Any) -> list[str]:
    """:func:`schema_problems` against the result-file schema ``paretopipe.run`` v1."""
    return schema_problems(doc, RUN_SCHEMA)
