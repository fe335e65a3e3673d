"""Self-supervised methods, one module each, registered by name (``train.method``); see docs/methods.md.

Adding a method: write ``dinolite/train/methods/<name>.py`` (objective, its config section's dataclass and
rules, ``register_method(MethodSpec(..., config_sections=...))``), a ``demo_<name>`` preset, and one import
line below.
"""

# One line per method: importing the module registers it.
from dinolite.train.methods import (
    barlow_twins,  # noqa: E402,F401  (registers "barlow_twins")
    beit,  # noqa: E402,F401  (registers "beit")
    dinov2,  # noqa: E402,F401  (registers "dinov2")
    directclr,  # noqa: E402,F401  (registers "directclr")
    distillation,  # noqa: E402,F401  (registers "distillation")
    ijepa,  # noqa: E402,F401  (registers "ijepa")
    lejepa,  # noqa: E402,F401  (registers "lejepa")
    mae,  # noqa: E402,F401  (registers "mae")
    mocov3,  # noqa: E402,F401  (registers "mocov3")
    msn,  # noqa: E402,F401  (registers "msn")
    pirl,  # noqa: E402,F401  (registers "pirl")
    siamese,  # noqa: E402,F401  (registers "simsiam" and "byol")
    simclr,  # noqa: E402,F401  (registers "simclr")
    simmim,  # noqa: E402,F401  (registers "simmim")
    swav,  # noqa: E402,F401  (registers "swav")
    vicreg,  # noqa: E402,F401  (registers "vicreg")
)
from dinolite.train.methods.registry import MethodSpec, get_method, list_methods, register_method

__all__ = ["MethodSpec", "get_method", "list_methods", "register_method"]
