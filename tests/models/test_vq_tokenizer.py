"""dinolite/models/vq_tokenizer.py: BEiT's VQ-VAE tokenizer, its file format and its refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dinolite.models.vq_tokenizer import METADATA_KEY, VQTokenizer, load_tokenizer, save_tokenizer


def _tokenizer() -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(patch_size=4, vocab_size=16, code_dim=8, hidden_dim=12)


def test_one_token_per_patch_the_nearest_code() -> None:
    tokenizer = _tokenizer()
    images = torch.randn(2, 3, 16, 12)
    tokens = tokenizer.tokenize(images)
    assert tokens.shape == (2, 4 * 3) and tokens.dtype == torch.int64
    z = tokenizer.encode(images).reshape(2, 12, 8)
    codes = torch.nn.functional.normalize(tokenizer.codebook.weight, dim=-1)
    assert torch.allclose(z.norm(dim=-1), torch.ones(2, 12))  # on the unit sphere
    distances = torch.cdist(z, codes[None].expand(2, -1, -1))
    assert torch.equal(tokens, distances.argmin(dim=-1))


def test_the_training_loss_is_reconstruction_codebook_and_commitment_with_straight_through() -> None:
    tokenizer = _tokenizer()
    images = torch.randn(2, 3, 8, 8)
    loss, reconstruction, tokens = tokenizer(images, beta=0.25)
    z = tokenizer.encode(images)
    e = torch.nn.functional.normalize(tokenizer.codebook.weight, dim=-1)[tokens.reshape(2, 2, 2)]
    expected = ((reconstruction - images) ** 2).mean() + 1.25 * ((z - e) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert tokenizer.encoder[0].weight.grad.abs().sum() > 0  # the straight-through estimator reaches the encoder
    assert tokenizer.codebook.weight.grad.abs().sum() > 0


def test_a_saved_tokenizer_loads_frozen_and_tokenizes_the_same(tmp_path) -> None:
    tokenizer = _tokenizer()
    path = save_tokenizer(tokenizer, tmp_path / "tok.safetensors")
    loaded = load_tokenizer(path)
    images = torch.randn(3, 3, 8, 8)
    assert torch.equal(loaded.tokenize(images), tokenizer.tokenize(images))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def _rewrite(path, tensors, metadata) -> None:
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda t, m: (t, {}), "metadata key 'dinolite_tokenizer' missing"),
        (lambda t, m: (t, {METADATA_KEY: "{not json"}), "is not JSON"),
        (lambda t, m: (t, {METADATA_KEY: json.dumps({**m, "kind": "dvae"})}), "only 'vq' is supported"),
        (lambda t, m: (t, {METADATA_KEY: json.dumps({**m, "code_dim": 0})}), "code_dim must be a positive integer"),
        (
            lambda t, m: ({k: v for k, v in t.items() if k != "codebook.weight"}, None),
            "tensor 'codebook.weight' missing",
        ),
        (lambda t, m: ({**t, "codebook.weight": torch.zeros(3, 8)}, None), r"'codebook.weight' has shape \(3, 8\)"),
        (lambda t, m: ({**t, "extra": torch.zeros(1)}, None), r"unexpected tensors \['extra'\]"),
    ],
)
def test_a_bad_tokenizer_file_is_refused_naming_the_file_and_key(tmp_path, damage, match) -> None:
    path = save_tokenizer(_tokenizer(), tmp_path / "tok.safetensors")
    record = _tokenizer().shape_record()
    tensors, metadata = damage(load_file(str(path)), record)
    _rewrite(path, tensors, metadata if metadata is not None else {METADATA_KEY: json.dumps(record)})
    with pytest.raises(ValueError, match=match) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


def test_a_missing_or_unreadable_file_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_tokenizer(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable .safetensors file"):
        load_tokenizer(tmp_path / "junk.safetensors")
