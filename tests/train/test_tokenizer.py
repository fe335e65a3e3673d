"""dinolite/train/tokenizer.py: BEiT's demo tokenizer trains on the config's data and writes a loadable file."""

from __future__ import annotations

import torch

import dinolite.train.methods  # noqa: F401  (registers beit's config section)
from dinolite.config import load_config
from dinolite.models.vq_tokenizer import load_tokenizer
from dinolite.train.tokenizer import train_tokenizer

SMALL = [
    "train.batch_size_per_gpu=16",
    "beit.vocab_size=16",
    "beit.tokenizer_iterations=40",
    "beit.tokenizer_hidden_dim=16",
    "beit.tokenizer_code_dim=8",
    "data.num_workers=0",
]


def test_training_lowers_the_vq_loss_and_writes_a_tokenizer_that_uses_several_codes(tmp_path) -> None:
    cfg = load_config("demo_beit", [*SMALL, f"train.output_dir={tmp_path / 'run'}"])
    lines: list[str] = []
    report = train_tokenizer(cfg, tmp_path / "tok.safetensors", log=lines.append)
    assert report.loss < 0.75 * report.first_loss
    assert report.used_codes > 1 and report.vocab_size == 16
    tokenizer = load_tokenizer(report.path)
    assert (tokenizer.patch_size, tokenizer.vocab_size) == (cfg.student.patch_size, 16)
    tokens = tokenizer.tokenize(torch.randn(4, 3, 32, 32))
    assert tokens.shape == (4, 64) and int(tokens.max()) < 16
    assert lines[-1].startswith(f"tokenizer written to {report.path}")
