"""Type and range checks of what a checkpoint's ``state.json`` says, naming the file and the key.

``state.json`` is a file in a folder someone may have handed over: eval, export and resume act on its
fields (the iteration, the data position, the evaluated network and head names), so each one is checked
before use, and a failure is a :class:`DamagedCheckpointError` that names the file, the key and the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dinolite.checkpoint.errors import DamagedCheckpointError
from dinolite.checkpoint.layout import FORMAT_VERSION

NETWORKS = ("teacher", "student")
_COUNTERS = {"iteration": 0, "batches_consumed": 0, "world_size": 1}  # key -> smallest valid value


def _refuse(file: Path, key: str, value: Any, expected: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(f"{file}: {key}={value!r} is not valid: expected {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_state_info(info: Any, file: Path) -> dict[str, Any]:
    """``state.json``'s content checked: a JSON object with integer counters in range and a known format."""
    if not isinstance(info, dict):
        raise DamagedCheckpointError(f"{file}: holds a JSON {type(info).__name__}, not an object")
    for key, lowest in _COUNTERS.items():
        if key not in info:
            raise DamagedCheckpointError(f"{file}: missing or non-integer {key!r}")
        if not _is_int(info[key]) or info[key] < lowest:
            raise _refuse(file, key, info[key], f"an integer >= {lowest}")
    version = info.get("format", FORMAT_VERSION)
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise _refuse(file, "format", version, f"an integer from 1 to {FORMAT_VERSION} (this dinolite's format)")
    if not isinstance(info.get("app_state", {}), dict):
        raise _refuse(file, "app_state", info["app_state"], "a JSON object")
    return info


def check_method_record(record: Any, file: Path) -> dict[str, Any]:
    """The ``method`` record: ``name`` (text), ``eval_network`` (teacher|student), ``heads`` (names), and for a
    multi-student run ``students`` (each student's architecture by name)."""
    where = "method"
    if not isinstance(record, Mapping):
        raise _refuse(file, where, record, "a JSON object")
    name = record.get("name")
    if not isinstance(name, str) or not name:
        raise _refuse(file, f"{where}.name", name, "a method name")
    network = record.get("eval_network")
    if network not in NETWORKS:
        raise _refuse(file, f"{where}.eval_network", network, " or ".join(NETWORKS))
    heads = record.get("heads", [])
    if not isinstance(heads, list) or not all(isinstance(h, str) and h.isidentifier() for h in heads):
        raise _refuse(file, f"{where}.heads", heads, "a list of module names")
    if "students" in record:
        _check_students(record["students"], file, f"{where}.students")
    return dict(record)


def _check_students(students: Any, file: Path, where: str) -> None:
    """Multi-student distillation's ``students``: ``{name: {student field: value}}``, at least one, each name
    an identifier (it is a module name in the checkpoint), each architecture a JSON object of fields."""
    if not isinstance(students, Mapping) or not students:
        raise _refuse(file, where, students, "a non-empty JSON object of students by name")
    for name, fields in students.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise _refuse(file, where, name, "student names that are identifiers")
        if not isinstance(fields, Mapping) or not all(isinstance(k, str) for k in fields):
            raise _refuse(file, f"{where}.{name}", fields, "a JSON object of student.* fields")
