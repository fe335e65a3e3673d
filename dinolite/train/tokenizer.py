"""Train BEiT's demo tokenizer: the VQ-VAE of :mod:`dinolite.models.vq_tokenizer` on the run's own data.

No pretrained image tokenizer (DALL-E's dVAE, BEiT's choice) can be downloaded here, so ``demo_beit``
tokenizes with one dinolite trains first, on the shards (or built-in set) of ``data.source`` and the crops
BEiT's objective sees (``train.method: beit``'s transform): ``beit.tokenizer_iterations`` AdamW steps at
``beit.tokenizer_lr`` on the VQ-VAE loss, batches of ``train.batch_size_per_gpu``, seeded by
``train.seed``. Two standard remedies against unused codes (van den Oord et al. 2017 leave them out; they
are common practice): the codebook starts from encoder outputs of the first batch, and every
``RESTART_EVERY`` iterations the codes no image chose since the last restart move to random encoder
outputs of the current batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dinolite.config import Config
from dinolite.models.vq_tokenizer import VQTokenizer, save_tokenizer
from dinolite.train.batches import StreamRequest, build_data_stream, resolve_train_source
from dinolite.train.methods import get_method

RESTART_EVERY = 50


@dataclass
class TokenizerReport:
    path: Path
    first_loss: float  # the first iteration's VQ-VAE loss
    loss: float  # the last iteration's
    used_codes: int  # codes chosen in the last RESTART_EVERY iterations
    vocab_size: int


def _random_rows(vectors: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    index = torch.randint(0, vectors.shape[0], (n,), generator=generator)
    return vectors[index]


def train_tokenizer(cfg: Config, output: str | Path, log: Callable[[str], None] = print) -> TokenizerReport:
    """Train the tokenizer ``cfg.beit`` describes on ``cfg.data.source`` and write it to ``output``."""
    torch.manual_seed(cfg.train.seed)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    beit = cfg.beit
    tokenizer = VQTokenizer(cfg.student.patch_size, beit.vocab_size, beit.tokenizer_code_dim, beit.tokenizer_hidden_dim)
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=beit.tokenizer_lr, weight_decay=0.0)
    spec = get_method("beit")
    source = resolve_train_source(cfg, Path(cfg.train.output_dir), True, lambda: None)
    request = StreamRequest(cfg, 0, 1, 0, spec.build_transform(cfg), spec.build_collate(cfg))
    stream = build_data_stream(request, source)
    used = torch.zeros(beit.vocab_size, dtype=torch.bool)
    losses: list[float] = []
    try:
        for iteration in range(beit.tokenizer_iterations):
            images = next(stream)["images"].float()
            if iteration == 0:
                with torch.no_grad():
                    vectors = tokenizer.encode(images).reshape(-1, tokenizer.code_dim)
                    tokenizer.codebook.weight.copy_(_random_rows(vectors, beit.vocab_size, generator))
            loss, _, tokens = tokenizer(images)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            used[tokens.unique()] = True
            if (iteration + 1) % RESTART_EVERY == 0 and iteration + 1 < beit.tokenizer_iterations:
                log(f"tokenizer iteration {iteration + 1}: loss {loss.item():.4f}, codes used {int(used.sum())}")
                with torch.no_grad():
                    dead = (~used).nonzero().flatten()
                    vectors = tokenizer.encode(images).reshape(-1, tokenizer.code_dim)
                    tokenizer.codebook.weight[dead] = _random_rows(vectors, len(dead), generator)
                used.zero_()
    finally:
        stream.close()
    path = save_tokenizer(tokenizer, output)
    report = TokenizerReport(path, losses[0], losses[-1], int(used.sum()), beit.vocab_size)
    log(f"tokenizer written to {path}: loss {report.loss:.4f}, {report.used_codes}/{report.vocab_size} codes used")
    return report
