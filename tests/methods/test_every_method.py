"""Every registered method, end to end on its CPU demo preset (shrunk): the registry's contract.

Parametrized over ``list_methods()`` (as timm's tests run over ``list_models()``), so a method gets all
of this by being registered: a few steps train; a run stopped at a random iteration and resumed is
bitwise equal to the uninterrupted run (every tensor of the final checkpoint: student, teacher,
optimizer state, extra state); the collapse monitor measures the method's embeddings; the evaluated
backbone loads for kNN; it exports to safetensors and ONNX with the same features; and it starts from
``student.pretrained_weights`` (student and teacher) through DINOv2's loader, refusing what it refuses.

Batches are random uint8 images through the method's own view transform and collate (the data
pipeline itself is tested in tests/data), so the runs take seconds.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

import pytest
import torch

import dinolite
from dinolite.checkpoint import load_consolidated_state_dict, method_record
from dinolite.commands.export import main as export_main
from dinolite.config import load_config
from dinolite.eval.backbone import load_any_backbone
from dinolite.eval.knn import knn_classify
from dinolite.export.spec import spec_from_backbone
from dinolite.export.writers import write_safetensors
from dinolite.models import build_backbone
from dinolite.train.batches import StreamRequest
from dinolite.train.loop import train
from dinolite.train.methods import get_method, list_methods
from dinolite.train.run import RunHooks

ITERATIONS = 6
# Shrinks any preset: a 2-block ViT on 16 px crops, 4 images, monitor every 2 steps.
SMALL = [
    "student.embed_dim=32",
    "student.depth=2",
    "student.num_heads=2",
    "student.patch_size=4",
    "student.drop_path_rate=0.1",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "train.batch_size_per_gpu=4",
    "train.iterations_per_epoch=2",
    "optim.epochs=3",
    "optim.warmup_epochs=1",
    "train.log_every=2",
    "train.checkpoint_every=100",
    "monitor.every=2",
    "data.num_workers=0",
    "train.device=cpu",
    "evaluation.knn_at_end=false",
]


def random_image_stream(request: StreamRequest):
    """Batch i depends only on (seed, rank, i), like build_train_loader(start_batch=...)."""
    cfg, rank, index = request.cfg, request.rank, request.start_batch
    transform, collate_fn = request.transform, request.collate_fn
    size = 2 * cfg.crops.global_crops_size
    while True:
        g = torch.Generator().manual_seed(cfg.train.seed * 1000 + rank * 100 + index)
        images = [
            torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
            for _ in range(cfg.train.batch_size_per_gpu)
        ]
        yield collate_fn([transform(image, generator=g) for image in images], generator=g)
        index += 1


# What a demo preset reads from another run, which this suite does not train: distillation's demo distils
# the trained demo run; here its teacher is a random one (tests/train/methods/test_distillation*.py
# distil from trained runs and exports).
# BEiT's demo reads the tokenizer dinolite-train-tokenizer writes; here a random one (tests/train/test_tokenizer.py
# trains one).
PRESET_INPUTS = {
    "distillation": ["distillation.teacher_weights=random"],
    "beit": [
        "beit.tokenizer=random",
        "beit.num_mask_patches=6",  # of the 4x4 grid of 16 px crops
        "beit.min_mask_patches=2",
    ],
}


def method_config(name: str, run_dir: Path, *extra: str, preset: str | None = None):
    """The method's demo preset (or ``preset``, one of its recipe presets), shrunk."""
    preset = preset or get_method(name).demo_preset
    overrides = [*SMALL, *PRESET_INPUTS.get(name, []), f"train.output_dir={run_dir}", *extra]
    return load_config(preset, overrides)


# Every method's demo preset, then the presets of other papers' recipes on it (DINO and iBOT on DINOv2's).
RECIPES = [
    (name, preset)
    for name in list_methods()
    for preset in (get_method(name).demo_preset, *get_method(name).recipe_presets)
]


def recipe_label(name: str, preset: str) -> str:
    """The method's name for its demo preset (the test ids and stop iterations it always had), else both."""
    return name if preset == get_method(name).demo_preset else f"{name}-{preset}"


class StopAt:
    """``stop_requested`` that turns true once the loop has taken ``iteration`` steps (a preemption)."""

    def __init__(self, iteration: int) -> None:
        self.iteration, self.calls = iteration, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.iteration


@pytest.fixture(
    scope="module",
    params=RECIPES,
    ids=[recipe_label(name, preset) for name, preset in RECIPES],
)
def runs(request, tmp_path_factory):
    """One uninterrupted run and one stopped at a random iteration then resumed, per method and recipe preset."""
    name, preset = request.param
    label = recipe_label(name, preset)
    root = tmp_path_factory.mktemp(label)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    straight = train(method_config(name, root / "straight", preset=preset), batches=random_image_stream)
    stop = random.Random(zlib.crc32(label.encode())).randint(1, ITERATIONS - 1)
    stopped = train(
        method_config(name, root / "resumed", preset=preset), batches=random_image_stream, hooks=RunHooks(StopAt(stop))
    )
    resumed = train(method_config(name, root / "resumed", preset=preset), batches=random_image_stream)
    torch.set_num_threads(previous)
    return {
        "name": name,
        "preset": preset,
        "root": root,
        "straight": straight,
        "stop": stop,
        "stopped": stopped,
        "resumed": resumed,
    }


def test_a_few_steps_train(runs):
    straight = runs["straight"]
    assert straight.status == "finished" and straight.iteration == ITERATIONS
    records = [json.loads(line) for line in (runs["root"] / "straight" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 1 + ITERATIONS // 2 and all(torch.isfinite(torch.tensor(losses)))  # iteration 1, then every 2
    start = method_config(runs["name"], runs["root"] / "unused", preset=runs["preset"])
    torch.manual_seed(start.train.seed)
    initial = get_method(runs["name"]).build_objective(start).student["backbone"].state_dict()
    trained = load_consolidated_state_dict(straight.checkpoint_path, "student", "backbone")
    assert any(not torch.equal(trained[k], initial[k]) for k in initial), "the student did not move"


def test_stop_at_a_random_iteration_then_resume_is_bitwise_equal(runs):
    stopped, resumed = runs["stopped"], runs["resumed"]
    assert stopped.status == "preempted" and stopped.iteration == runs["stop"]
    assert resumed.status == "finished" and resumed.iteration == ITERATIONS
    # Everything the checkpoint holds: model (student, teacher, buffers), optimizer state, extra, app.
    a = load_consolidated_state_dict(runs["straight"].checkpoint_path, "objective", None)
    b = load_consolidated_state_dict(resumed.checkpoint_path, "objective", None)
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"stopped at iteration {runs['stop']}: {different[:5]}"


def test_collapse_monitor_measures_the_method_embeddings(runs):
    records = [json.loads(line) for line in (runs["root"] / "straight" / "metrics.jsonl").read_text().splitlines()]
    collapse = [r for r in records if "collapse/num_samples" in r]
    assert [r["iteration"] for r in collapse] == list(range(2, ITERATIONS + 1, 2))
    for prefix in get_method(runs["name"]).monitor_embeddings.values():
        for stat in ("std", "std_ratio", "rankme", "rankme_ratio"):
            value = collapse[-1][f"collapse/{prefix}_{stat}"]
            assert value == value and value >= 0, (prefix, stat, value)  # finite-or-zero, not NaN
    # DINOv2 and the joint-embedding family give each image's two global views: LiDAR's surrogate classes
    sections = {section.name for section in get_method(runs["name"]).config_sections}
    if runs["name"] == "dinov2" or "joint_embedding" in sections:
        assert collapse[-1]["collapse/backbone_lidar"] >= 1.0 - 1e-6


def test_the_evaluated_backbone_loads_for_knn(runs):
    spec = get_method(runs["name"])
    run_dir = runs["root"] / "straight"
    assert method_record(run_dir)["eval_network"] == spec.eval_network
    backbone = load_any_backbone(run_dir)
    assert backbone.spec.source == spec.eval_network and not backbone.training
    # Dark and bright images with a little noise: two classes any backbone separates.
    g = torch.Generator().manual_seed(0)
    size = backbone.spec.train_img_size
    labels = torch.arange(40) % 2
    images = (labels.float() * 2 - 1).view(-1, 1, 1, 1) + 0.1 * torch.randn(40, 3, size, size, generator=g)
    with torch.no_grad():
        features = backbone(images)
    assert features.shape == (40, backbone.embed_dim)
    result = knn_classify(features[:30], labels[:30], features[30:], labels[30:], num_classes=2, ks=(5,))
    assert result["top1"] >= 90.0, result


def test_exports_to_safetensors_and_onnx_with_the_same_features(runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    run_dir = runs["root"] / "straight"
    reference = load_any_backbone(run_dir)
    out = tmp_path / "backbone.safetensors"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out), "--with-heads"]) == 0
    exported = dinolite.load_backbone(out)
    assert exported.spec.source == get_method(runs["name"]).eval_network
    for key, value in reference.state_dict().items():
        assert torch.equal(exported.state_dict()[key], value), key
    heads = get_method(runs["name"]).head_names(method_config(runs["name"], run_dir, preset=runs["preset"]))
    assert set(exported.spec.extra["heads"]) <= set(heads)

    onnx_path = tmp_path / "backbone.onnx"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(onnx_path), "--format", "onnx"]) == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, reference.spec.train_img_size, reference.spec.train_img_size)
    cls, _ = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = reference.forward_features(images)["x_norm_clstoken"]
    torch.testing.assert_close(torch.from_numpy(cls), expected, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ student.pretrained_weights (issue 24)


class RunsCodeWhenUnpickled:
    """A pickle payload: loading it with plain ``pickle`` creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _perturbed_export(cfg, path: Path) -> dict[str, torch.Tensor]:
    """A dinolite export of the method's student architecture whose every trained tensor differs from
    the default initialisation; returns its tensors."""
    torch.manual_seed(12345)
    backbone = build_backbone(cfg.student, img_size=cfg.crops.global_crops_size)
    with torch.no_grad():
        for parameter in backbone.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    write_safetensors(backbone.state_dict(), spec_from_backbone(backbone), path)
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def _first_step(name: str, cfg):
    """The objective built from ``cfg`` (seeded) and its loss on one fixed batch."""
    spec = get_method(name)
    torch.manual_seed(cfg.train.seed)
    objective = spec.build_objective(cfg)
    request = StreamRequest(cfg, 0, 1, 0, spec.build_transform(cfg), spec.build_collate(cfg))
    batch = next(random_image_stream(request))
    torch.manual_seed(0)
    return objective, objective(batch, 0).loss.detach()


@pytest.mark.parametrize("name", list_methods())
def test_pretrained_weights_initialise_every_methods_student(name, tmp_path):
    path = tmp_path / "backbone.safetensors"
    exported = _perturbed_export(method_config(name, tmp_path / "run"), path)
    objective, loss = _first_step(name, method_config(name, tmp_path / "run", f"student.pretrained_weights={path}"))
    networks = [objective.student] + ([objective.teacher] if "backbone" in objective.teacher else [])
    for network in networks:  # the teacher / target copy starts from the weights too
        state = network["backbone"].state_dict()
        assert sorted(state) == sorted(exported)
        different = [k for k in exported if not torch.equal(state[k], exported[k])]
        assert not different, f"{name}: the backbone does not hold the file's {different[:5]}"
    _, without = _first_step(name, method_config(name, tmp_path / "run"))
    assert not torch.equal(loss, without), f"{name}: the loss is the same with and without the weights"


def _pickle_payload(tmp_path: Path, cfg) -> Path:
    path = tmp_path / "payload.pth"
    torch.save({"cls_token": RunsCodeWhenUnpickled(tmp_path / "MARKER")}, path)
    return path


def _truncated(tmp_path: Path, cfg) -> Path:
    path = tmp_path / "cut.safetensors"
    _perturbed_export(cfg, path)
    path.write_bytes(path.read_bytes()[:200])
    return path


def _another_architecture(tmp_path: Path, cfg) -> Path:
    path = tmp_path / "deeper.safetensors"
    inputs = PRESET_INPUTS.get(cfg.train.method, [])
    deeper = load_config(get_method(cfg.train.method).demo_preset, [*SMALL, *inputs, "student.depth=3"])
    _perturbed_export(deeper, path)
    return path


# (what the file is, how it is made, what the error names): DINOv2's loader and its errors, for every method.
UNLOADABLE = [
    pytest.param(_pickle_payload, r"weights_only", id="a pickle that runs code"),
    pytest.param(_truncated, r"cannot read as safetensors", id="a truncated export"),
    pytest.param(_another_architecture, r"whose depth is 3", id="another architecture"),
]


@pytest.mark.parametrize(("make", "match"), UNLOADABLE)
@pytest.mark.parametrize("name", list_methods())
def test_an_unloadable_pretrained_file_is_refused_by_every_method(name, make, match, tmp_path):
    path = make(tmp_path, method_config(name, tmp_path / "run"))
    cfg = method_config(name, tmp_path / "run", f"student.pretrained_weights={path}")
    with pytest.raises(ValueError, match=rf"student\.pretrained_weights='{path}'.*{match}"):
        get_method(name).build_objective(cfg)
    assert not (tmp_path / "MARKER").exists()
