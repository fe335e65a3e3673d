"""dinolite/commands/train_tokenizer.py: ``dinolite-train-tokenizer`` writes beit.tokenizer (or --output)
and refuses a config that is not BEiT's."""

from __future__ import annotations

from dinolite.commands.train_tokenizer import main
from dinolite.models.vq_tokenizer import load_tokenizer

SMALL = ["train.batch_size_per_gpu=8", "beit.vocab_size=8", "beit.tokenizer_iterations=2", "data.num_workers=0"]


def test_writes_the_tokenizer_to_beit_tokenizer(tmp_path, capsys) -> None:
    path = tmp_path / "tok.safetensors"
    assert main(["--config", "demo_beit", *SMALL, f"beit.tokenizer={path}", f"train.output_dir={tmp_path}"]) == 0
    assert load_tokenizer(path).vocab_size == 8
    assert f"tokenizer written to {path}" in capsys.readouterr().out


def test_refuses_another_method_and_a_missing_output(tmp_path, capsys) -> None:
    assert main(["--config", "demo_mae"]) != 0
    assert "the tokenizer is BEiT's" in capsys.readouterr().err
    assert main(["--config", "demo_beit", "beit.tokenizer=random"]) != 0
    assert "where to write the tokenizer" in capsys.readouterr().err
