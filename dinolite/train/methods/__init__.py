"""Self-supervised methods, one module each, registered by name (``train.method``); see docs/methods.md.

Adding a method: write ``dinolite/train/methods/<name>.py`` (objective + ``register_method(MethodSpec(...))``),
a ``demo_<name>`` preset, and one import line below.
"""

from dinolite.train.methods.registry import MethodSpec, get_method, list_methods, register_method

# One line per method: importing the module registers it.
from dinolite.train.methods import dinov2  # noqa: E402,F401  (registers "dinov2")
from dinolite.train.methods import barlow_twins  # noqa: E402,F401  (registers "barlow_twins")
from dinolite.train.methods import directclr  # noqa: E402,F401  (registers "directclr")
from dinolite.train.methods import ijepa  # noqa: E402,F401  (registers "ijepa")
from dinolite.train.methods import msn  # noqa: E402,F401  (registers "msn")
from dinolite.train.methods import siamese  # noqa: E402,F401  (registers "simsiam" and "byol")
from dinolite.train.methods import simclr  # noqa: E402,F401  (registers "simclr")
from dinolite.train.methods import simmim  # noqa: E402,F401  (registers "simmim")

__all__ = ["MethodSpec", "get_method", "list_methods", "register_method"]
