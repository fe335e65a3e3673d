"""dinolite/train/methods/distillation_multi.py: several students of one frozen teacher (``distillation.students``).

The teacher's forward runs once per step whatever the number of students; each student's loss terms, gradients
and weights equal a single-student run of that student with the same seed and batches; each student has its own
EMA, parameter groups and FSDP units; 2 processes equal 1 process; the checkpoint holds each student under its
name, and a SIGKILL then resume equals the uninterrupted run bitwise. Eval/export by ``--student``:
tests/export/test_consolidate_students.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinolite.checkpoint import load_consolidated_state_dict, method_record
from dinolite.distributed import DistributedEnv
from dinolite.fsdp.sharding import is_sharded
from dinolite.train.build import build_run
from dinolite.train.loop import train
from dinolite.train.methods.distillation_multi import MultiStudentDistillationObjective
from dinolite.train.methods.distillation_objective import FINGERPRINT_KEY
from dinolite.train.optim import get_param_groups
from tests.methods.test_every_method import random_image_stream
from tests.train.methods.distillation_helpers import distil_config, kill_at_iteration_4_and_resume, write_teacher
from tests.train.scale_worker import full_state, global_batch_slice

REPO = Path(__file__).resolve().parents[3]
STEPS, GLOBAL_BATCH = 3, 8
# Two students of different widths and depths; the base student section (32 wide, 2 deep) is the second's.
TWO_STUDENTS = "distillation.students=[{name: narrow, embed_dim: 16, num_heads: 2, depth: 3}, {name: wide}]"
NARROW = ["student.embed_dim=16", "student.num_heads=2", "student.depth=3"]


def _steps(cfg, steps: int = STEPS, rank: int = 0, world: int = 1, env: DistributedEnv | None = None):
    run = build_run(cfg, env or DistributedEnv())
    outputs = [run.step(global_batch_slice(i, GLOBAL_BATCH, rank, world)) for i in range(steps)]
    return run, outputs


def _count_calls(module: torch.nn.Module, method: str) -> list[int]:
    calls = [0]
    original = getattr(module, method)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(module, method, counted)
    return calls


@pytest.mark.parametrize("n_students", [1, 2, 3])
def test_the_teacher_forward_runs_once_per_step_whatever_the_student_count(tmp_path: Path, n_students: int):
    teacher = tmp_path / "teacher.safetensors"
    write_teacher(teacher, width=48, depth=3)
    entries = ", ".join(f"{{name: s{i}, embed_dim: {16 * (i + 1)}}}" for i in range(n_students))
    cfg = distil_config(teacher, f"distillation.students=[{entries}]")
    run = build_run(cfg, DistributedEnv())
    assert isinstance(run.objective, MultiStudentDistillationObjective)
    frozen = run.objective.distillation_teacher
    backbone_calls = _count_calls(frozen["backbone"], "forward_features")
    head_calls = _count_calls(frozen["dino_head"], "forward")
    student_calls = [_count_calls(s["backbone"], "forward_features_list") for s in run.objective.student.values()]
    for i in range(STEPS):
        run.step(global_batch_slice(i, GLOBAL_BATCH, 0, 1))
    assert backbone_calls == [STEPS]
    assert head_calls == [STEPS]  # a shared DINO/iBOT head: one call for CLS and patches per step
    assert [c[0] for c in student_calls] == [STEPS] * n_students  # each student runs every step


@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_each_student_trains_as_a_single_student_run_with_the_same_seed_and_data(tmp_path: Path, centering: str):
    teacher = tmp_path / "teacher.safetensors"
    write_teacher(teacher, width=48, depth=3)
    common = [f"train.centering={centering}", "optim.layerwise_decay=0.8", "optim.clip_grad=0.5"]
    multi, multi_out = _steps(distil_config(teacher, *common, TWO_STUDENTS))
    alone = {
        "narrow": _steps(distil_config(teacher, *common, *NARROW)),
        "wide": _steps(distil_config(teacher, *common)),
    }
    for name, (run, outputs) in alone.items():
        for step, (one, both) in enumerate(zip(outputs, multi_out)):
            for term, value in one.output.terms.items():
                assert torch.equal(both.output.terms[f"{name}/{term}"], value), (name, step, term)
            for module, norm in one.grad_norms.items():  # the gradients, before clipping, module by module
                assert both.grad_norms[module.replace("grad_norm/", f"grad_norm/{name}.")] == norm, (name, module)
        for network in ("student", "teacher"):  # the trained student and its EMA after 3 steps
            single = full_state(getattr(run.objective, network))
            ours = full_state(getattr(multi.objective, network)[name])
            assert single.keys() == ours.keys()
            assert all(torch.equal(ours[k], single[k]) for k in single), (name, network)
    total = sum(float(out.output.loss.detach()) for out in multi_out)
    assert total == pytest.approx(
        sum(float(o.output.loss.detach()) for _, outs in alone.values() for o in outs), rel=1e-6
    )


def test_each_student_has_its_own_parameter_groups_by_its_own_depth(tmp_path: Path):
    cfg = distil_config("random", TWO_STUDENTS, "optim.layerwise_decay=0.5")
    run = build_run(cfg, DistributedEnv())
    assert {g["student"] for g in run.optimizer.param_groups} == {"narrow", "wide"}
    groups = get_param_groups(run.objective.student, 0.5)
    for group in groups:
        assert all(name.startswith(f"{group['student']}.") for name in group["names"])
    # the patch embedding sits below every block: decay^(depth + 1), by each student's depth (3 and 2)
    patch = {
        g["student"]: g["lr_multiplier"] for g in groups if any("patch_embed.proj.weight" in n for n in g["names"])
    }
    assert patch == {"narrow": 0.5**4, "wide": 0.5**3}
    trained = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in run.objective.student.parameters()}
    assert not trained & {id(p) for p in run.objective.teacher.parameters()}  # the EMAs are not trained


def test_each_student_has_its_own_ema(tmp_path: Path):
    cfg = distil_config("random", TWO_STUDENTS, "ema.momentum=0.9", "ema.final_momentum=0.9")
    run = build_run(cfg, DistributedEnv())
    before = {name: full_state(run.objective.teacher[name]) for name in ("narrow", "wide")}
    run.step(global_batch_slice(0, GLOBAL_BATCH, 0, 1))
    for name in ("narrow", "wide"):
        student, ema = full_state(run.objective.student[name]), full_state(run.objective.teacher[name])
        for key, value in ema.items():
            torch.testing.assert_close(value, 0.9 * before[name][key] + 0.1 * student[key])
    assert run.objective.teacher["narrow"]["backbone"].embed_dim == 16
    assert run.objective.teacher["wide"]["backbone"].embed_dim == 32


def test_the_checkpoint_holds_each_student_and_its_ema_under_its_name(tmp_path: Path):
    teacher = tmp_path / "teacher.safetensors"
    write_teacher(teacher, width=48, depth=3)
    out = tmp_path / "run"
    result = train(
        distil_config(teacher, TWO_STUDENTS, f"train.output_dir={out}", "optim.epochs=1"), batches=random_image_stream
    )
    for network in ("student", "teacher"):
        state = load_consolidated_state_dict(result.checkpoint_path, network, None)
        assert {k.split(".")[0] for k in state} == {"narrow", "wide"}
        assert state["narrow.backbone.cls_token"].shape[-1] == 16 and state["wide.backbone.cls_token"].shape[-1] == 32
        assert {k.split(".")[1] for k in state} == {"backbone", "dino_head"}
    extra = load_consolidated_state_dict(result.checkpoint_path, "objective", "extra")
    assert FINGERPRINT_KEY in extra and "dino_loss.center" in extra  # the one teacher's: stored once
    record = method_record(out)
    assert list(record["students"]) == ["narrow", "wide"]
    assert (record["students"]["narrow"]["embed_dim"], record["students"]["narrow"]["depth"]) == (16, 3)
    assert record["students"]["wide"]["embed_dim"] == 32 and record["heads"] == ["dino_head"]


def test_a_one_student_config_keeps_the_single_student_layout_and_record(tmp_path: Path):
    out = tmp_path / "run"
    train(distil_config("random", f"train.output_dir={out}", "optim.epochs=1"), batches=random_image_stream)
    assert "students" not in method_record(out)
    assert "backbone.cls_token" in load_consolidated_state_dict(out, "teacher", None)


# ------------------------------------------------------------------------------------------ 2 = 1
TWO_EQUALS_ONE = ["dino.koleo_loss_weight=0", "distributed.sharding_strategy=full_shard", TWO_STUDENTS]


def _result(run, outputs) -> dict:
    return {
        "losses": torch.stack([o.output.loss.detach().clone() for o in outputs]),
        "student": full_state(run.objective.student),
        "ema": full_state(run.objective.teacher),
    }


def _worker(rank: int, world: int, init_file: str, out_dir: str, teacher: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = distil_config(teacher, *TWO_EQUALS_ONE, f"train.batch_size_per_gpu={GLOBAL_BATCH // world}")
        env = DistributedEnv(rank=rank, world_size=world, backend="gloo")
        run, outputs = _steps(cfg, rank=rank, world=world, env=env)
        units = [run.objective.student[n][part] for n in ("narrow", "wide") for part in ("backbone", "dino_head")]
        units += [block for n in ("narrow", "wide") for block in run.objective.student[n]["backbone"].blocks]
        units += [run.objective.teacher[n]["backbone"] for n in ("narrow", "wide")]
        torch.save({**_result(run, outputs), "sharded": all(is_sharded(u) for u in units)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process_with_each_student_sharded_on_its_own(tmp_path: Path):
    teacher = tmp_path / "teacher.safetensors"
    write_teacher(teacher, width=48, depth=3)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), str(teacher)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    cfg = distil_config(teacher, *TWO_EQUALS_ONE, f"train.batch_size_per_gpu={GLOBAL_BATCH}")
    one = _result(*_steps(cfg))
    assert all(rank["sharded"] for rank in ranks)  # each student's blocks, backbone and heads: own FSDP units
    torch.testing.assert_close((ranks[0]["losses"] + ranks[1]["losses"]) / 2, one["losses"], rtol=1e-5, atol=1e-6)
    for rank in ranks:
        for network in ("student", "ema"):
            assert rank[network].keys() == one[network].keys()
            for key, value in one[network].items():
                torch.testing.assert_close(rank[network][key], value, rtol=1e-5, atol=1e-6, msg=f"{network} {key}")
    assert one["losses"][-1] != one["losses"][0]


# ------------------------------------------------------------------------------------------ kill and resume
@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run_bitwise_for_every_student(tmp_path: Path):
    teacher = tmp_path / "teacher.safetensors"
    write_teacher(teacher, width=48, depth=3)
    kill_at_iteration_4_and_resume(tmp_path, teacher, TWO_STUDENTS)
    for network in ("student", "teacher"):
        expected = load_consolidated_state_dict(tmp_path / "ref", network, None)
        got = load_consolidated_state_dict(tmp_path / "run", network, None)
        assert expected.keys() == got.keys() and {k.split(".")[0] for k in got} == {"narrow", "wide"}
        assert all(torch.equal(got[k], expected[k]) for k in expected), network
    expected = load_consolidated_state_dict(tmp_path / "ref", "objective", "extra")  # centring, fingerprint
    got = load_consolidated_state_dict(tmp_path / "run", "objective", "extra")
    assert expected.keys() == got.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
