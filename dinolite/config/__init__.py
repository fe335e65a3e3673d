"""Typed, validated configuration.

``load_config(name_or_path, overrides)`` merges ``dinolite/configs/default.yaml`` <- preset <- dotted overrides and
validates the result against the dataclasses below. Every mistake is reported at start-up with the full
dotted path of the key at fault: an unknown key names the nearest valid key, a wrong type names the
expected type and the value given, and an unknown preset lists the available ones.

Key names follow DINOv2's ``ssl_default_config.yaml`` where DINOv2 has the key (``student.arch``,
``dino.head_n_prototypes``, ``optim.base_lr``, ...) so that DINOv2 users can carry their overrides over.

A file never runs a shell command (``pipe:`` sources) or reads the environment (``${oc.env:...}`` and every
other resolver) unless the user grants it outside the file (:mod:`dinolite.config.opt_ins`).
"""

from dinolite.config import opt_ins
from dinolite.config.loading import (
    available_presets,
    config_from_dict,
    load_config,
    load_yaml_as,
    save_config,
    to_dict,
    to_yaml,
)
from dinolite.config.opt_ins import OptIns, granted
from dinolite.config.schema import (
    CHOICES,
    CONFIG_DIR,
    TRACKERS,
    Config,
    ConfigError,
    CropsConfig,
    DataConfig,
    DinoConfig,
    DistributedConfig,
    EvaluationConfig,
    IbotConfig,
    IJEPAConfig,
    JointEmbeddingConfig,
    MonitorConfig,
    MSNConfig,
    OptimConfig,
    SimMIMConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    ViewConfig,
    WatchdogThreshold,
)
from dinolite.config.validation import RANGES, get_by_path, validate, validate_data

__all__ = [
    "CHOICES",
    "CONFIG_DIR",
    "RANGES",
    "TRACKERS",
    "Config",
    "ConfigError",
    "CropsConfig",
    "DataConfig",
    "DinoConfig",
    "DistributedConfig",
    "EvaluationConfig",
    "IJEPAConfig",
    "IbotConfig",
    "JointEmbeddingConfig",
    "MSNConfig",
    "OptIns",
    "MonitorConfig",
    "OptimConfig",
    "SimMIMConfig",
    "StudentConfig",
    "TeacherConfig",
    "TrainConfig",
    "ViewConfig",
    "WatchdogThreshold",
    "available_presets",
    "config_from_dict",
    "get_by_path",
    "granted",
    "load_config",
    "load_yaml_as",
    "opt_ins",
    "save_config",
    "to_dict",
    "to_yaml",
    "validate",
    "validate_data",
]
