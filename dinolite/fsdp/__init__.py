"""Sharding a training objective over processes: FSDP2 / HSDP, activation checkpointing, per-block
compilation (:mod:`dinolite.fsdp.sharding`) and the global-norm gradient clipping that goes with them
(:mod:`dinolite.fsdp.clipping`).

Below ``train`` (which composes it) and beside it, as in DINOv3's layout; it may import the building
blocks and ``dinolite.distributed``."""
