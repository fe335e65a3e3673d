"""Config sections a method owns: its module defines them, registering the method registers them here.

The shared schema (:class:`dinolite.config.schema.Config`) holds what every method reads (student, ema,
optim, crops, data, train, distributed, monitor, evaluation). A method's own knobs live in a dataclass its
module defines (DINOv2's ``dino`` / ``ibot`` / ``teacher``, MSN's ``msn``, ...), named in its registry entry
as a :class:`ConfigSection`; ``dinolite.train.methods.register_method`` calls :func:`register_section` for
each. The loader then builds the config class from the shared fields plus every registered section
(:func:`config_class`, a dataclass subclass of ``Config``, cached), so a section is a top-level YAML key and
``cfg.dino.head_n_prototypes`` reads as before. This package cannot import the methods (they sit above it):
it learns their sections only from what registered.

Rules: every registered section's keys and types are checked with every config (a typo is a typo); a
section's own rules (:attr:`ConfigSection.validate`, :attr:`ConfigSection.check_layer`) run only when
``train.method`` is a method that registered that section, so one method's rules never fire for another.

A section that no method registered in this process (a config read by export, which never imports the
trainer) can be kept as plain data: :class:`SectionData`, a dict (see ``unknown_sections`` in
:func:`dinolite.config.load_config`).
"""

from __future__ import annotations

import dataclasses
import functools
import keyword
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable, Dict, Mapping, Optional

from dinolite.config.schema import Config

# (section, whole config) -> None; raises ConfigError naming the key. ``section`` is the section's dataclass.
SectionRule = Callable[[Any, Any], None]
# (what one user file or the overrides set in this section, the merged config so far, the file) -> None.
LayerRule = Callable[[Mapping[str, Any], Any, str], None]

SHARED_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


@dataclass(frozen=True)
class ConfigSection:
    """A top-level config section that a method owns (or, for a family, shares with its siblings).

    Attributes:
        name: the YAML key (``dino``, ``msn``, ...).
        schema: the dataclass; its defaults are the section's defaults, one comment per field saying what
            it means (the documentation of the section: ``configs/default.yaml`` lists shared keys only).
        validate: the section's rules (ranges, choices, cross-key constraints), run after loading only when
            ``train.method`` registered this section; the message names the dotted key and the value.
        check_layer: a rule on what one user file or the override list sets (e.g. a key that another key
            of the same layer makes meaningless); same condition.
    """

    name: str
    schema: type
    validate: Optional[SectionRule] = None
    check_layer: Optional[LayerRule] = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or keyword.iskeyword(self.name):
            raise ValueError(f"config section name {self.name!r} is not an identifier")
        if self.name in SHARED_SECTIONS:
            raise ValueError(f"config section {self.name!r} is a shared section of dinolite.config.Config")
        if not dataclasses.is_dataclass(self.schema):
            raise ValueError(f"config section {self.name!r}: schema {self.schema!r} is not a dataclass")


class SectionData(dict):
    """A section no registered method owns, kept as the plain mapping the file holds (not validated, no
    defaults filled in). Item access works; attribute access says why the typed section is missing."""

    section = "?"

    @classmethod
    def of(cls, name: str, values: Mapping[str, Any]) -> SectionData:
        """``values`` as the plain data of section ``name``."""
        data = cls(values)
        data.section = name
        return data

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        raise AttributeError(
            f"config section {self.section!r} was read as plain data (no method registered it in this process), "
            f"so it has no attribute {key!r}: import dinolite.train.methods before loading the config to get the "
            f"typed, validated section, or read it as {self.section}[{key!r}]"
        )


_SCHEMAS: dict[str, type] = {}  # section name -> dataclass
_USES: dict[str, dict[str, ConfigSection]] = {}  # method -> section name -> its section (with its rules)


def register_section(section: ConfigSection, method: str) -> ConfigSection:
    """Record that ``method`` uses ``section``. Several methods may register one name (a family section),
    with their own rules, but all with the same dataclass."""
    known = _SCHEMAS.get(section.name)
    if known is not None and known is not section.schema:
        raise ValueError(
            f"config section {section.name!r} is registered with {known.__module__}.{known.__qualname__}; "
            f"method {method!r} brings another dataclass, {section.schema.__module__}.{section.schema.__qualname__}"
        )
    _SCHEMAS[section.name] = section.schema
    _USES.setdefault(method, {})[section.name] = section
    return section


# method -> whether its objective reads the backbone's CLS token (``student.cls_token=false`` is refused for a
# method that does); the registry records it with the method's sections
_READS_CLS_TOKEN: dict[str, bool] = {}


def register_cls_token_use(method: str, reads_cls_token: bool) -> None:
    """Record whether ``method`` reads the CLS token (checked by ``student.cls_token``'s rule)."""
    _READS_CLS_TOKEN[method] = reads_cls_token


def reads_cls_token(method: str) -> Optional[bool]:
    """Whether ``method`` reads the CLS token; None for a method unknown in this process."""
    return _READS_CLS_TOKEN.get(method)


def methods_without_cls_token() -> list[str]:
    """The registered methods that read no CLS token (``student.cls_token=false`` allowed), sorted."""
    return sorted(method for method, reads in _READS_CLS_TOKEN.items() if not reads)


def registered_sections() -> dict[str, type]:
    """Section name -> dataclass, for every section registered in this process (sorted by name)."""
    return dict(sorted(_SCHEMAS.items()))


def sections_of(method: str) -> tuple[ConfigSection, ...]:
    """The sections ``method`` registered (empty for a method unknown here)."""
    return tuple(_USES.get(method, {}).values())


def methods_using(name: str) -> list[str]:
    """The methods that registered section ``name``, sorted."""
    return sorted(method for method, sections in _USES.items() if name in sections)


def config_class(plain_sections: tuple[str, ...] = ()) -> type[Config]:
    """The config dataclass: the shared fields, every registered section, and ``plain_sections`` (names no
    method registered, kept as :class:`SectionData`)."""
    typed = tuple(registered_sections().items())
    plain = tuple(sorted(set(plain_sections) - set(_SCHEMAS) - set(SHARED_SECTIONS)))
    return _config_class(typed + tuple((name, SectionData) for name in plain))


def _restore(sections: tuple[tuple[str, type], ...], state: dict[str, Any]) -> Config:
    """Unpickle a config (its class is built again from the same sections)."""
    cfg = _config_class(sections).__new__(_config_class(sections))
    cfg.__dict__.update(state)
    return cfg


def _reduce(self: Config) -> tuple[Callable[..., Config], tuple[Any, ...]]:
    return _restore, (type(self).SECTIONS, dict(self.__dict__))


@functools.lru_cache(maxsize=None)
def _config_class(sections: tuple[tuple[str, type], ...]) -> type[Config]:
    if not sections:
        return Config
    fields = [
        (name, Dict[str, Any], field(default_factory=dict))
        if schema is SectionData
        else (name, schema, field(default_factory=schema))
        for name, schema in sections
    ]
    # Pickling goes through _restore (the class is not a module attribute; the section dataclasses are).
    cls = make_dataclass("Config", fields, bases=(Config,), namespace={"SECTIONS": sections, "__reduce__": _reduce})
    cls.__module__ = __name__
    return cls
