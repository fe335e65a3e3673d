"""What a config file may not do on its own: run a shell command, or read the environment.

Configs, presets, lab matrices and run folders (whose ``config.yaml`` is read back on resume, eval and
export) are shared like data, so reading one must not run anything or leak anything. Two things a file
could ask for reach outside it, and both are refused unless the *user* grants them for this process:

- a ``pipe:COMMAND`` data source (``data.source``, a lab matrix's ``data`` / ``eval_train`` /
  ``eval_val``): the data loader runs ``COMMAND`` with a shell;
- an OmegaConf *resolver* interpolation ``${name:...}`` (``oc.env`` reads an environment variable,
  ``oc.decode`` parses a string as YAML and resolves what it holds; every other registered resolver,
  including ones a third-party import registers, is refused the same way, by its syntax).

The grant comes from the command line (``--allow-pipe-sources``, ``--allow-env-interpolation`` on
``dinolite-train``, ``dinolite-slurm``, ``dinolite-lab``, ``dinolite-info`` and
``python -m dinolite.commands.summary``) or from the environment (``DINOLITE_ALLOW_PIPE_SOURCES=1``,
``DINOLITE_ALLOW_ENV_INTERPOLATION=1``; read by every program, eval and export included), never from a
file. A flag sets the variable for the life of the command, so that whatever that command starts (a
Slurm job also carries its grant explicitly: :class:`OptIns` is pickled with it) sees the same grant.
``key=value`` overrides typed on the command line obey the same rule: it is one rule for every layer.

Plain ``${key}`` references to other keys of the same config stay allowed: they resolve inside the
merged config (default.yaml <- preset <- overrides), which is itself checked, and reach nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import grammar_parser
from omegaconf.errors import GrammarParseError

from dinolite.config.schema import ConfigError

PIPE_SOURCES_VARIABLE = "DINOLITE_ALLOW_PIPE_SOURCES"
ENV_INTERPOLATION_VARIABLE = "DINOLITE_ALLOW_ENV_INTERPOLATION"
PIPE_SOURCES_FLAG = "--allow-pipe-sources"
ENV_INTERPOLATION_FLAG = "--allow-env-interpolation"
PIPE_PREFIX = "pipe:"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
# ``${`` preceded by any number of backslashes: OmegaConf's escape is ``\${``, a literal backslash before
# an interpolation is ``\\${`` (see :func:`literal_strings`).
_INTERPOLATION_START = re.compile(r"(\\*)\$\{")


@dataclass(frozen=True)
class OptIns:
    """What the user allowed for this process (see the module docstring)."""

    pipe_sources: bool = False
    env_interpolation: bool = False

    @contextlib.contextmanager
    def applied(self) -> Iterator[OptIns]:
        """Grant what this holds to the process (and what it starts) inside the block; the environment
        comes back as it was after it. Never takes a grant away."""
        previous = {name: os.environ.get(name) for name in (PIPE_SOURCES_VARIABLE, ENV_INTERPOLATION_VARIABLE)}
        if self.pipe_sources:
            os.environ[PIPE_SOURCES_VARIABLE] = "1"
        if self.env_interpolation:
            os.environ[ENV_INTERPOLATION_VARIABLE] = "1"
        try:
            yield granted()
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _flag(variable: str, environ: Mapping[str, str]) -> bool:
    value = environ.get(variable, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"environment variable {variable}={environ[variable]!r}: expected 1 (allow) or 0 (refuse)")


def granted(environ: Mapping[str, str] | None = None) -> OptIns:
    """The opt-ins in force: ``DINOLITE_ALLOW_*`` of ``environ`` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    return OptIns(
        pipe_sources=_flag(PIPE_SOURCES_VARIABLE, environ),
        env_interpolation=_flag(ENV_INTERPOLATION_VARIABLE, environ),
    )


def add_opt_in_arguments(parser: argparse.ArgumentParser) -> None:
    """``--allow-pipe-sources`` and ``--allow-env-interpolation``; apply them with :func:`from_args`."""
    group = parser.add_argument_group("what a config file may do (docs/safety.md; never granted by the file)")
    group.add_argument(
        PIPE_SOURCES_FLAG,
        action="store_true",
        help=f"run 'pipe:COMMAND' data sources (shell commands) named by the config (also {PIPE_SOURCES_VARIABLE}=1)",
    )
    group.add_argument(
        ENV_INTERPOLATION_FLAG,
        action="store_true",
        help="resolve ${oc.env:VAR} and the other OmegaConf resolvers in the config "
        f"(also {ENV_INTERPOLATION_VARIABLE}=1)",
    )


def from_args(args: argparse.Namespace) -> OptIns:
    """The grant of the flags :func:`add_opt_in_arguments` added (``with from_args(args).applied(): ...``)."""
    return OptIns(
        pipe_sources=bool(getattr(args, "allow_pipe_sources", False)),
        env_interpolation=bool(getattr(args, "allow_env_interpolation", False)),
    )


# ---------------------------------------------------------------------------------------------- checks


def _how_to_allow(flag: str, variable: str) -> str:
    return f"only the user can allow it, with {flag} or {variable}=1 in the environment (docs/safety.md)"


def is_pipe_source(entry: object) -> bool:
    """Whether a data source entry can name a shell command (anywhere: brace expansion may bring
    ``pipe:`` to the front, e.g. ``{pipe:cmd,x}``)."""
    return isinstance(entry, str) and PIPE_PREFIX in entry


def check_pipe_sources(entries: object, key: str, source: str, opt_ins: OptIns | None = None) -> None:
    """Refuse ``pipe:`` entries in ``entries`` (a list or one string) unless granted; names source and key."""
    if (opt_ins or granted()).pipe_sources:
        return
    items = [entries] if isinstance(entries, str) else list(entries) if isinstance(entries, Sequence) else []
    for i, entry in enumerate(items):
        if is_pipe_source(entry):
            where = key if isinstance(entries, str) else f"{key}[{i}]"
            raise ConfigError(
                f"{source}: {where} = {entry!r} is a 'pipe:' source, a shell command the data loader would run; "
                f"a config may not run commands on its own: {_how_to_allow(PIPE_SOURCES_FLAG, PIPE_SOURCES_VARIABLE)}"
            )


def _resolvers_in(text: str) -> list[str]:
    """Names of the resolvers that the OmegaConf string ``text`` calls (nested ones included)."""
    if "${" not in text:
        return []
    try:
        tree = grammar_parser.parse(text)
    except GrammarParseError:
        return []  # not an interpolation OmegaConf can resolve: it fails on its own, nothing is called
    names, stack = [], [tree]
    while stack:
        node = stack.pop()
        if type(node).__name__ == "InterpolationResolverContext":
            names.append(node.resolverName().getText())
        stack.extend(node.getChild(i) for i in range(node.getChildCount()) if node.getChild(i).getChildCount())
    return names


def check_interpolations(tree: Any, source: str, opt_ins: OptIns | None = None, path: str = "") -> None:
    """Refuse every resolver interpolation (``${oc.env:X}``, ``${oc.decode:...}``, ...) in the raw
    (unresolved) ``tree`` of plain dicts, lists and strings, unless granted; names source and key."""
    if (opt_ins or granted()).env_interpolation:
        return
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            check_interpolations(str(key), source, opt_ins, f"{path}.{key}" if path else str(key))
            check_interpolations(value, source, opt_ins, f"{path}.{key}" if path else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            check_interpolations(value, source, opt_ins, f"{path}[{i}]")
    elif isinstance(tree, str):
        names = _resolvers_in(tree)
        if names:
            raise ConfigError(
                f"{source}: {path or 'value'} = {tree!r} calls the resolver {names[0]!r} (${{{names[0]}:...}} "
                "reads from outside the file: the environment, or a value it decodes); a config may not do that "
                f"on its own: {_how_to_allow(ENV_INTERPOLATION_FLAG, ENV_INTERPOLATION_VARIABLE)}. References to "
                "other keys of the config (${section.key}) need no grant"
            )


def literal_strings(tree: Any) -> Any:
    """``tree`` (plain dicts, lists, values) with every string escaped so that OmegaConf reads it back
    as the same characters: a resolved config saved to disk or handed to another process never holds an
    interpolation that would be resolved there (e.g. an environment value that itself reads
    ``${oc.env:OTHER}``)."""
    if isinstance(tree, Mapping):
        return {key: literal_strings(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [literal_strings(value) for value in tree]
    if isinstance(tree, str):
        return _INTERPOLATION_START.sub(lambda m: m.group(1) * 2 + "\\${", tree)
    return tree
