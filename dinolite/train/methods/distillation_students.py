"""Several students of one frozen teacher (``distillation.students``): their config entries, the full config each
student trains under, and what a checkpoint records about them for eval and export.

An entry is a name plus any ``student.*`` field (``arch``, ``embed_dim``, ``depth``, ``num_heads``,
``drop_path_rate``, ``pretrained_weights``, ...); a field the entry leaves unset is ``student.*``'s. Everything
else (heads sized by ``dino.*`` / ``ibot.*`` at the student's width, losses, optimizer, schedules, crops) is
shared by every student, as the one teacher's targets are. An empty list is single-student distillation,
unchanged: the ``student`` section is the one student (docs/distillation.md, "Several students").
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional

from dinolite.config import Config, ConfigError, validate
from dinolite.config.schema import StudentConfig


def _student_overrides() -> type:
    """A dataclass with ``name`` and every :class:`StudentConfig` field as ``Optional`` (None: ``student.*``'s),
    made from StudentConfig so that a field added there is a per-student field at once."""
    hints = typing.get_type_hints(StudentConfig)
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=""))]
    for item in dataclasses.fields(StudentConfig):
        fields.append((item.name, Optional[hints[item.name]], dataclasses.field(default=None)))
    cls = dataclasses.make_dataclass("DistilledStudent", fields)
    cls.__module__ = __name__
    cls.__doc__ = "One student of multi-student distillation: ``name`` and the student.* fields it sets."
    return cls


DistilledStudent = _student_overrides()
ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(StudentConfig))


def student_overrides(entry: Any) -> dict[str, Any]:
    """The ``student.*`` fields an entry sets (those not None)."""
    return {name: getattr(entry, name) for name in ARCH_FIELDS if getattr(entry, name) is not None}


def check_students(cfg: Config) -> None:
    """Names that are identifiers, unique; no Gram anchoring (it anchors one EMA teacher's patches)."""
    students = cfg.distillation.students
    names = [entry.name for entry in students]
    for i, name in enumerate(names):
        if not (isinstance(name, str) and name.isidentifier()):
            raise ConfigError(
                f"invalid value for 'distillation.students[{i}].name': {name!r}; each student needs a name that is "
                "an identifier (it names the student's modules in the checkpoint and --student in eval/export)"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"invalid value for 'distillation.students': the names {duplicates} are used twice")
    for i, (name, student_cfg) in enumerate(student_configs(cfg).items()):
        try:  # each student's fields by the rules of the student section (choices, ranges, arch)
            validate(student_cfg)
        except ConfigError as exc:
            raise ConfigError(
                f"distillation.students[{i}] (student {name!r}) gives a student section that is not valid: {exc}"
            ) from exc
    if students and getattr(getattr(cfg, "gram", None), "use_loss", False):
        raise ConfigError(
            "gram.use_loss=true with distillation.students: Gram anchoring follows one EMA teacher and is not "
            "available for several students; set gram.use_loss=false or train one student"
        )


def student_configs(cfg: Config) -> dict[str, Config]:
    """Each student's full config, by name: ``cfg`` with its ``student`` section updated by the entry's fields, as
    single-student distillation (``distillation.students`` empty) of that student."""
    alone = dataclasses.replace(cfg.distillation, students=[])
    return {
        entry.name: dataclasses.replace(
            cfg, student=dataclasses.replace(cfg.student, **student_overrides(entry)), distillation=alone
        )
        for entry in cfg.distillation.students
    }


def students_record(cfg: Config) -> dict[str, Any]:
    """What ``state.json``'s method record holds for eval and export (``students``: each student's whole
    ``student`` section, by name); nothing for single-student distillation, whose record is unchanged."""
    if not cfg.distillation.students:
        return {}
    return {"students": {name: dataclasses.asdict(c.student) for name, c in student_configs(cfg).items()}}
