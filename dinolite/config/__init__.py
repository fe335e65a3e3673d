"""Typed, validated configuration.

``load_config(name_or_path, overrides)`` merges ``dinolite/configs/default.yaml`` <- preset <- dotted overrides and
validates the result against the dataclasses: the shared sections below (what every method reads) and the
sections each method owns, registered by the method (:mod:`dinolite.config.sections`). Every mistake is
reported at start-up with the full dotted path of the key at fault: an unknown key names the nearest valid
key, a wrong type names the expected type and the value given, and an unknown preset lists the available ones.

Key names follow DINOv2's ``ssl_default_config.yaml`` where DINOv2 has the key (``student.arch``,
``dino.head_n_prototypes``, ``optim.base_lr``, ...) so that DINOv2 users can carry their overrides over.

A file never runs a shell command (``pipe:`` sources) or reads the environment (``${oc.env:...}`` and every
other resolver) unless the user grants it outside the file (:mod:`dinolite.config.opt_ins`).
"""

from dinolite.config import opt_ins
from dinolite.config.loading import (
    UNKNOWN_SECTIONS,
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
    DistributedConfig,
    EMAConfig,
    EvaluationConfig,
    MonitorConfig,
    OptimConfig,
    StudentConfig,
    TrainConfig,
    WatchdogThreshold,
)
from dinolite.config.sections import (
    SHARED_SECTIONS,
    ConfigSection,
    SectionData,
    config_class,
    methods_using,
    register_section,
    registered_sections,
    sections_of,
)
from dinolite.config.validation import (
    RANGES,
    check_choices,
    check_fraction_pairs,
    check_positive,
    check_ranges,
    get_by_path,
    validate,
    validate_data,
)
from dinolite.config_aliases import dinov2_dataset_hint

__all__ = [
    "CHOICES",
    "CONFIG_DIR",
    "RANGES",
    "SHARED_SECTIONS",
    "TRACKERS",
    "UNKNOWN_SECTIONS",
    "Config",
    "ConfigError",
    "ConfigSection",
    "CropsConfig",
    "DataConfig",
    "DistributedConfig",
    "EMAConfig",
    "EvaluationConfig",
    "MonitorConfig",
    "OptIns",
    "OptimConfig",
    "SectionData",
    "StudentConfig",
    "TrainConfig",
    "WatchdogThreshold",
    "available_presets",
    "check_choices",
    "check_fraction_pairs",
    "check_positive",
    "check_ranges",
    "config_class",
    "config_from_dict",
    "dinov2_dataset_hint",
    "get_by_path",
    "granted",
    "load_config",
    "load_yaml_as",
    "methods_using",
    "opt_ins",
    "register_section",
    "registered_sections",
    "save_config",
    "sections_of",
    "to_dict",
    "to_yaml",
    "validate",
    "validate_data",
]
