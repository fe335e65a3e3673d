"""dinolite/train/methods/distillation_students.py: the ``distillation.students`` entries, each student's config and
what the checkpoint records about them.

An entry inherits every ``student.*`` field it leaves unset; unknown keys get "did you mean"; names are unique
identifiers; each student's section is validated by the student section's rules, naming the entry; Gram
anchoring is refused; the record holds each student's whole section, and nothing for one student."""

from __future__ import annotations

import dataclasses

import pytest

import dinolite.train.methods  # noqa: F401 - registers the distillation section
from dinolite.config import ConfigError
from dinolite.train.methods.distillation_students import (
    DistilledStudent,
    student_configs,
    student_overrides,
    students_record,
)
from tests.train.methods.distillation_helpers import distil_config

TWO = "distillation.students=[{name: narrow, embed_dim: 16, num_heads: 2}, {name: deep, depth: 3}]"


def test_every_student_field_can_be_set_per_student_and_unset_ones_are_the_student_sections():
    assert {f.name for f in dataclasses.fields(DistilledStudent)} >= {"name", "arch", "embed_dim", "drop_path_rate"}
    cfg = distil_config("random", TWO)
    assert student_overrides(cfg.distillation.students[0]) == {"embed_dim": 16, "num_heads": 2}
    students = student_configs(cfg)
    assert list(students) == ["narrow", "deep"]
    narrow, deep = students["narrow"].student, students["deep"].student
    assert (narrow.embed_dim, narrow.num_heads, narrow.depth) == (16, 2, 2)  # depth: the student section's
    assert (deep.embed_dim, deep.num_heads, deep.depth) == (32, 2, 3)
    assert narrow.patch_size == deep.patch_size == cfg.student.patch_size == 4
    # each student's config is single-student distillation of that student; the rest is shared
    assert all(c.distillation.students == [] and c.dino == cfg.dino and c.optim == cfg.optim for c in students.values())


def test_an_unknown_key_in_an_entry_is_named_with_the_nearest_one():
    with pytest.raises(
        ConfigError, match=r"'distillation.students\[1\].dept'; did you mean 'distillation.students\[1\].depth'"
    ):
        distil_config("random", "distillation.students=[{name: a}, {name: b, dept: 3}]")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("[{name: a}, {name: a}]", r"'distillation.students': the names \['a'\] are used twice"),
        ("[{embed_dim: 16}]", r"'distillation.students\[0\].name': ''; each student needs a name"),
        ("[{name: 2nd}]", r"'distillation.students\[0\].name': '2nd'"),
        (
            "[{name: a}, {name: b, ffn_layer: mlpp}]",
            r"distillation.students\[1\] \(student 'b'\).*'student.ffn_layer': 'mlpp'",
        ),
        ("[{name: a, arch: vit_huge}]", r"distillation.students\[0\] \(student 'a'\).*student.arch"),
    ],
)
def test_bad_entries_are_refused_naming_the_entry(entries: str, message: str):
    with pytest.raises(ConfigError, match=message):
        distil_config("random", f"distillation.students={entries}")


def test_gram_anchoring_is_refused_with_several_students():
    with pytest.raises(ConfigError, match="gram.use_loss=true with distillation.students"):
        distil_config("random", TWO, "gram.use_loss=true")


def test_the_record_holds_each_students_section_and_nothing_for_one_student():
    assert students_record(distil_config("random")) == {}
    record = students_record(distil_config("random", TWO))["students"]
    assert list(record) == ["narrow", "deep"]
    assert record["narrow"] == dataclasses.asdict(student_configs(distil_config("random", TWO))["narrow"].student)
    assert (record["narrow"]["embed_dim"], record["deep"]["depth"]) == (16, 3)
