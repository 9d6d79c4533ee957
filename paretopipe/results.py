"""Result files (schema ``paretopipe.run`` v1, docs/results.md): build, check, write.

Files are written atomically and never overwritten (:func:`paretoio.files.write_atomic` with
``exclusive``: a temporary file in the same folder, then ``os.link`` to the final name, which
fails if the name is taken).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paretoio.files import write_json_atomic
from paretopipe.errors import ConfigError

SCHEMA = "paretopipe.run"
SCHEMA_VERSION = 1

def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_id(*, model: str, splits: Sequence[int], backend: str, network: str, batch_size: int,
           window: int, repeat: int, codec: str = "none") -> str:
    """The file-name stem of a run, e.g. ``resnet18-s5-tcp-lan-b8-w4-r0`` (``s3_9`` for 3 stages);
    a codec other than ``none`` adds ``-c<codec>`` before the repeat (``-cint8+zstd``)."""
    split_part = "_".join(str(k) for k in splits)
    safe_net = "".join(c if c.isalnum() or c in "-." else "_" for c in network)
    codec_part = "" if codec == "none" else f"-c{codec}"
    return f"{model}-s{split_part}-{backend}-{safe_net}-b{batch_size}-w{window}{codec_part}-r{repeat}"


def validity(*, warmup: int, counted: int, duration_s: float, min_batches: int,
             min_duration_s: float) -> dict[str, Any]:
    batches_met = counted >= min_batches
    duration_met = duration_s >= min_duration_s
    return {
        "warmup_batches": warmup, "counted_batches": counted, "duration_s": duration_s,
        "min_batches": min_batches, "min_duration_s": min_duration_s,
        "min_batches_met": batches_met, "min_duration_met": duration_met,
        "valid": batches_met and duration_met,
    }


def build_result(*, run_id: str, sweep_id: str | None, status: str, error: str | None,
                 config: dict[str, Any], environment: list[dict[str, Any]],
                 batches: list[dict[str, Any]], summary: dict[str, Any],
                 validity: dict[str, Any], **extra: Any) -> dict[str, Any]:
    doc = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "run_id": run_id, "sweep_id": sweep_id,
        "created_utc": utc_now(), "status": status, "error": error, "config": config,
        "environment": {"stages": environment}, "batches": batches, "summary": summary,
        "validity": validity,
    }
    doc.update(extra)
    return doc


def validate_result(doc: Any) -> list[str]:
    """Problems with a result document (empty when it follows schema v1).

    The schema is the JSON Schema file the analysis reads files with
    (``paretoio/schemas/paretopipe.run.v1.schema.json``, published in docs/results.md), checked
    with ``jsonschema``; on top of it, the two cross-field rules a JSON Schema cannot state:
    one stage more than splits, and per batch one compute time and one hop per stage.
    """
    from paretoio.schema import run_schema_problems  # jsonschema is loaded only when writing

    problems = run_schema_problems(doc)
    if problems:
        return problems
    nstages = len(doc["config"]["stages"])
    if nstages != len(doc["config"]["splits"]) + 1:
        problems.append("$.config.stages: must have one entry more than config.splits")
    for i, b in enumerate(doc["batches"]):
        if len(b["compute_s"]) != nstages or len(b["hops"]) != nstages:
            problems.append(f"$.batches[{i}]: needs {nstages} compute_s entries and {nstages} hops")
    return problems


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early (before any work) if `path` is taken or its folder cannot be made."""
    path = Path(path)
    if path.exists():
        raise ConfigError(f"result file {path} already exists; result files are never overwritten (pick another --out)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {path.parent}: {exc.strerror}") from None
    return path


def write_result(doc: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically; never overwrite. Raises ConfigError if the name is taken."""
    problems = validate_result(doc)
    if problems:
        raise ValueError(f"result document breaks schema v1: {'; '.join(problems[:5])}")
    return write_json_exclusive(doc, path, what="result file")


def write_json_exclusive(doc: Any, path: str | os.PathLike[str], *, what: str) -> Path:
    """Write JSON atomically, never over an existing file; ConfigError if the name is taken."""
    try:
        return write_json_atomic(path, doc, exclusive=True)
    except FileExistsError:
        raise ConfigError(f"{what} {path} already exists; not overwritten") from None


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)



def _exit_text(returncode: int) -> str:
    if returncode < 0:
        import signal

        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def judge_run(path: str | os.PathLike[str], returncode: int, *, reason: str | None = None,
              failed_doc: Any = None) -> tuple[str, str | None]:
    """The one rule for a source process's run: ``("ok", None)`` or ``("failed", why)``.

    A run is ok only when its process exited with status 0 *and* its file says ok. After that
    the file at `path` always says what was judged:

    - exit 0, file ok: ok;
    - file failed (whatever the exit): failed, the file's own error;
    - non-zero exit and no file: failed; ``failed_doc(why)`` (a failed result document) is
      written at `path`;
    - non-zero exit but the file says ok (the process died after writing it): failed. The file
      is kept beside it as ``<name>.died`` (not read as a result) and a failed document naming
      the exit takes its place, so that no count, resume or analysis can take it for ok.

    `reason` is the process's own last error line, when it printed one."""
    path = Path(path)
    doc: dict[str, Any] | None = None
    if path.exists():
        try:
            doc = read_result(path)
        except (OSError, ValueError) as exc:
            doc = {"status": "failed", "error": f"unreadable result file {path}: {exc}"}
    if returncode == 0 and doc is not None and doc.get("status") == "ok":
        return "ok", None
    if doc is not None and doc.get("status") != "ok":
        return "failed", str(doc.get("error") or reason or f"the source {_exit_text(returncode)}")
    if doc is None:
        why = reason or f"the source {_exit_text(returncode)} without writing {path.name}"
        if returncode == 0:
            why = f"the source exited with status 0 but wrote no result file {path.name}"
        if failed_doc is not None:
            write_result(failed_doc(why), path)
        return "failed", why
    kept = path.with_name(path.name + ".died")
    why = (f"the source {_exit_text(returncode)} after writing an ok result; that file is kept as "
           f"{kept.name} and not counted")
    os.replace(path, kept)
    if failed_doc is not None:
        write_result(failed_doc(why), path)
    return "failed", why
