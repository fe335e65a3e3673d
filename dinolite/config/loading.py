"""Loading: ``default.yaml`` <- preset <- ``key=value`` overrides, merged onto the schema and validated.

The schema is the shared :class:`Config` plus every section a method registered
(:func:`dinolite.config.sections.config_class`). Unknown keys name the nearest valid key, wrong types name
the expected type and the value, an unknown preset lists the presets; DINOv2's key names are translated
(:mod:`dinolite.config_aliases`).

``unknown_sections`` says what a top-level section that no method registered in this process becomes:
``"error"`` (refused, with the nearest valid key), ``"keep"`` (kept as plain data,
:class:`~dinolite.config.sections.SectionData`: export reads a run's ``config.yaml`` this way, as it never
imports the trainer that registers the sections), or ``"auto"`` (the default: ``"keep"`` when no method
registered any section, i.e. the trainer's methods were never imported, else ``"error"``). A section name
that is a near miss of a known one is refused in every mode.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dinolite import config_aliases
from dinolite.config import sections
from dinolite.config.opt_ins import check_interpolations, check_pipe_sources, literal_strings
from dinolite.config.schema import CONFIG_DIR, Config, ConfigError
from dinolite.config.validation import validate
from dinolite.io import write_text_atomic


def available_presets() -> list[str]:
    """Names of the presets shipped in ``dinolite/configs/`` (without ``.yaml``), ``default`` excluded."""
    return sorted(p.stem for p in _config_dir().glob("*.yaml") if p.stem != "default")


def _config_dir() -> Path:
    return CONFIG_DIR


def _resolve_preset(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    candidate = _config_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            f"unknown config preset {str(name_or_path)!r}; available presets: {', '.join(available_presets())}"
            " (or pass a path to a .yaml file)"
        )
    return candidate


def _read_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends: name the file
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if loaded is None:
        return OmegaConf.create({})
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
    check_interpolations(OmegaConf.to_container(loaded, resolve=False), str(path))  # before anything resolves
    return loaded


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _check_keys(node: Any, cls: type, path: str, source: str) -> None:
    """Reject keys that the schema does not know, naming the full path and the nearest valid key."""
    if not isinstance(node, DictConfig):
        return
    fields = _field_types(cls)
    for key in node.keys():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            valid = [f"{path}.{k}" if path else k for k in fields]
            near = config_aliases.suggest(full, valid)  # DINOv2's key names first
            hint = f"; did you mean {near}?" if near else f"; valid keys here: {', '.join(sorted(fields))}"
            if not path and not sections.registered_sections():
                hint += (
                    " (no method registered its config sections in this process: import dinolite.train.methods "
                    "before loading, or load with unknown_sections='keep')"
                )
            raise ConfigError(f"{source}: unknown config key {full!r}{hint}")
        inner = _unwrap_optional(fields[key])
        value = node._get_node(key)
        if dataclasses.is_dataclass(inner):
            _check_keys(value, inner, full, source)
        elif typing.get_origin(inner) is list:
            (item_type,) = typing.get_args(inner) or (Any,)
            if dataclasses.is_dataclass(item_type) and isinstance(value, ListConfig):
                for i, item in enumerate(value):
                    _check_keys(item, item_type, f"{full}[{i}]", source)


def _type_name(tp: Any) -> str:
    tp = _unwrap_optional(tp)
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def load_yaml_as(path: str | Path, schema: type, what: str = "file") -> Any:
    """Read a YAML file into the dataclass ``schema`` with this module's checks and messages.

    For files other than training configs (e.g. the collapse lab's matrix files): unknown keys name the
    full dotted path and the nearest valid key, wrong types name the expected type and the value given,
    a missing required key (a field without a default) is named; every message starts with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    node = _read_yaml(path)
    _check_keys(node, schema, "", str(path))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_format_omegaconf_error(exc, str(path), schema)) from exc


def _translate(node: DictConfig, source: str) -> DictConfig:
    try:
        return config_aliases.translate(node, source)  # DINOv2's (and former) key names -> ours
    except config_aliases.AliasError as exc:
        raise ConfigError(str(exc)) from None


def _merge(base: DictConfig, other: DictConfig, source: str, schema: type) -> DictConfig:
    """``other`` (translated already) checked against ``schema`` and merged onto ``base``."""
    _check_keys(other, schema, "", source)
    data = other.get("data")
    if isinstance(data, DictConfig) and "source" in data:
        check_pipe_sources(OmegaConf.to_container(data, resolve=False).get("source"), "data.source", source)
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise ConfigError(_format_omegaconf_error(exc, source, schema)) from exc


UNKNOWN_SECTIONS = ("auto", "error", "keep")


def _plain_sections(layers: Sequence[DictConfig], unknown_sections: str) -> tuple[str, ...]:
    """Top-level mappings of ``layers`` that no method registered, when they are to be kept as data."""
    if unknown_sections not in UNKNOWN_SECTIONS:
        raise ValueError(f"unknown_sections={unknown_sections!r}: expected one of {', '.join(UNKNOWN_SECTIONS)}")
    registered = sections.registered_sections()
    if unknown_sections == "error" or (unknown_sections == "auto" and registered):
        return ()
    known = [*sections.SHARED_SECTIONS, *registered]
    names = {
        str(key)
        for layer in layers
        if isinstance(layer, DictConfig)
        for key in layer.keys()
        if str(key) not in known and isinstance(layer._get_node(key), DictConfig)
    }
    # a near miss of a known section is a typo, refused by the key check whatever the mode
    return tuple(sorted(n for n in names if not difflib.get_close_matches(n, known, n=1, cutoff=0.8)))


def _to_config(merged: DictConfig, source: str, schema: type) -> Config:
    try:
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_format_omegaconf_error(exc, source, schema)) from exc
    for name, kind in getattr(schema, "SECTIONS", ()):
        if kind is sections.SectionData:
            setattr(cfg, name, sections.SectionData.of(name, getattr(cfg, name)))
    return cfg


def _format_omegaconf_error(exc: OmegaConfBaseException, source: str, root: type) -> str:
    path = getattr(exc, "full_key", None) or "?"
    expected = _schema_type(path, root)
    msg = str(exc).splitlines()[0]
    expected_txt = f", expected {_type_name(expected)}" if expected is not None else ""
    return f"{source}: invalid value for {path!r}{expected_txt}: {msg}"


def _schema_type(dotted: str, root: type) -> Any:
    """The declared type of a dotted key in the schema, or None when the path is not a plain field."""
    cls: Any = root
    tp: Any = None
    for part in dotted.split("."):
        name = part.split("[")[0]
        if not dataclasses.is_dataclass(cls) or name not in _field_types(cls):
            return None
        tp = _field_types(cls)[name]
        cls = _unwrap_optional(tp)
        if "[" in part and typing.get_origin(cls) is list:  # runs[2].label: the item's field
            tp = cls = (typing.get_args(cls) or (Any,))[0]
    return tp


def _split_list(body: str) -> list[str]:
    """``a, b{1..2}, 'c'`` -> items, splitting on commas outside braces/brackets/quotes (shard patterns)."""
    items, depth, quote, current = [], 0, "", ""
    for char in body:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += char
    items.append(current)
    return [item.strip().strip("'\"") for item in items if item.strip()]


def _parse_override(item: str, schema: type) -> DictConfig:
    """One ``key=value``; a list-typed key takes ``[p1, p2]`` with brace patterns, or one bare value."""
    key, _, value = item.partition("=")
    key = key.strip()
    is_list = typing.get_origin(_unwrap_optional(_schema_type(key, schema))) is list
    try:
        node = OmegaConf.from_dotlist([item])
    except Exception as exc:  # yaml's ParserError/ScannerError are not OmegaConf errors
        text = value.strip()
        if is_list and text.startswith("[") and text.endswith("]"):  # [/d/shard-{000000..001281}.tar]
            return (
                OmegaConf.from_dotlist([]) if not text[1:-1].strip() else _list_override(key, _split_list(text[1:-1]))
            )
        reason = " ".join(str(exc).split())
        raise ConfigError(
            f"cannot parse override {item!r}: {reason}; quote the value if it is meant as a string"
        ) from None
    if is_list and isinstance(OmegaConf.select(node, key), str):  # data.source=/d/shard-{0..9}.tar
        return _list_override(key, [OmegaConf.select(node, key)])
    return node


def _list_override(key: str, values: list[str]) -> DictConfig:
    node = OmegaConf.create({})
    OmegaConf.update(node, key, values, force_add=True)
    return node


def _parse_overrides(overrides: Sequence[str], schema: type) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
    merged = OmegaConf.create({})
    for item in overrides:
        try:
            merged = OmegaConf.merge(merged, _parse_override(item, schema))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"cannot parse override {item!r}: {str(exc).splitlines()[0]}") from exc
    return merged


@dataclass(frozen=True)
class _Layer:
    node: DictConfig  # DINOv2's key names translated already
    source: str  # the file, or "overrides"
    user: bool  # a user's file or the overrides (the shipped files are consistent): layer rules apply


def _layers(preset_path: Path, overrides: Sequence[str]) -> list[_Layer]:
    """default.yaml, the preset (unless it is default.yaml), the overrides: aliases translated."""
    default = _config_dir() / "default.yaml"
    layers = [_Layer(_translate(_read_yaml(default), "default.yaml"), "default.yaml", False)]
    if preset_path.name != "default.yaml" or preset_path.parent != _config_dir():
        raw = _read_yaml(preset_path)
        node = _translate(raw, str(preset_path))
        if config_aliases.is_dinov2_file(raw):
            layers.append(_dinov2_defaults_layer(preset_path, node))
        layers.append(_Layer(node, str(preset_path), preset_path.parent != _config_dir()))
    if overrides:
        node = _parse_overrides(overrides, sections.config_class())
        check_interpolations(OmegaConf.to_container(node, resolve=False), "overrides")
        layers.append(_Layer(_translate(node, "overrides"), "overrides", True))
    return layers


def _dinov2_defaults_layer(path: Path, node: DictConfig) -> _Layer:
    """DINOv2 reads every file over its ``ssl_default_config.yaml``: so does dinolite for a DINOv2 file,
    where DINOv2's defaults differ from dinolite's (one notice per key the file leaves to them)."""
    given = {key for key in config_aliases.DINOV2_DEFAULTS if OmegaConf.select(node, key) is not None}
    ours = OmegaConf.load(_config_dir() / "default.yaml")
    layer = OmegaConf.create({})
    for key, value in config_aliases.dinov2_defaults(given).items():
        OmegaConf.update(layer, key, value, force_add=True)
        warnings.warn(
            f"{path}: a DINOv2 config, read over DINOv2's defaults as DINOv2 reads it: {key}={value} "
            f"(DINOv2's ssl_default_config.yaml: {config_aliases.DINOV2_DEFAULTS[key][1]}; dinolite's default: "
            f"{OmegaConf.select(ours, key)}); override {key} to change it",
            config_aliases.DINOv2KeyNotice,
            stacklevel=4,
        )
    return _Layer(layer, "DINOv2's ssl_default_config.yaml", False)


def _check_layers(layers: Sequence[tuple[_Layer, DictConfig]], method: str) -> None:
    """The layer rules of ``method``'s sections, on each user layer with the config merged up to it."""
    for section in sections.sections_of(method):
        if section.check_layer is None:
            continue
        for layer, merged in layers:
            own = layer.node.get(section.name)
            if isinstance(own, DictConfig):
                section.check_layer(OmegaConf.to_container(own, resolve=False), merged, layer.source)


def load_config(
    name_or_path: str | Path = "demo", overrides: Sequence[str] = (), *, unknown_sections: str = "auto"
) -> Config:
    """Load ``default.yaml`` <- preset (name in ``dinolite/configs/`` or a path) <- ``key=value`` overrides.

    Returns a validated config: an instance of :class:`Config` with every registered method section (see
    the module docstring for ``unknown_sections``). Raises :class:`ConfigError` naming the key at fault.
    """
    preset_path = _resolve_preset(name_or_path)
    layers = _layers(preset_path, overrides)
    schema = sections.config_class(_plain_sections([layer.node for layer in layers], unknown_sections))
    merged = OmegaConf.structured(schema)
    user_layers = []
    for layer in layers:
        merged = _merge(merged, layer.node, layer.source, schema)
        if layer.user:
            user_layers.append((layer, merged))
    cfg = _to_config(merged, "config", schema)
    _check_layers(user_layers, cfg.train.method)
    # A pipe: that only an interpolation (${other.key}) puts together is not in any one layer's text.
    check_pipe_sources(cfg.data.source, "data.source", f"{preset_path} with its overrides (resolved)")
    validate(cfg)
    return cfg


def config_from_dict(data: dict, source: str = "saved config", *, unknown_sections: str = "auto") -> Config:
    """Rebuild a validated config from the plain dict of a resolved one (:func:`to_dict`, e.g. the config a
    Slurm job was submitted with). Its strings are values, not OmegaConf text: a ``${...}`` in one stays
    those characters (nothing is interpolated), and its ``pipe:`` sources are refused unless granted."""
    node = _translate(OmegaConf.create(literal_strings(data)), source)
    schema = sections.config_class(_plain_sections([node], unknown_sections))
    cfg = _to_config(_merge(OmegaConf.structured(schema), node, source, schema), source, schema)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """Plain-dict form of a config (JSON/YAML serialisable): its values as they are, nothing resolved again
    (a ``${...}`` that a value holds after resolution stays text)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The config as YAML that reads back (:func:`load_config`) to the same values: ``${`` in a value is
    written escaped, so no interpolation saved in a run folder is resolved when the run is read back."""
    return OmegaConf.to_yaml(OmegaConf.create(literal_strings(to_dict(cfg))))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically (every run saves the config it ran with)."""
    write_text_atomic(path, to_yaml(cfg))
