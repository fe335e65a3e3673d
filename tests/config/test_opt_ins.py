"""Opt-ins: a config may not run a shell or read the environment on its own; only the user grants either,
by flag or environment variable, and the grant lasts for one command. (Every program refusing a hostile
file end to end: tests/config/test_hostile_config.py.)"""

from __future__ import annotations

import argparse
import os
import re

import pytest
from omegaconf import OmegaConf

from dinolite.config import ConfigError
from dinolite.config.opt_ins import (
    ENV_INTERPOLATION_VARIABLE,
    PIPE_SOURCES_VARIABLE,
    OptIns,
    add_opt_in_arguments,
    check_interpolations,
    check_pipe_sources,
    from_args,
    granted,
    literal_strings,
)

REFUSE = OptIns()
ALLOW = OptIns(pipe_sources=True, env_interpolation=True)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("yes", True), (" On ", True), ("0", False), ("", False)])
def test_the_environment_grants_with_one_and_refuses_with_zero(value, expected):
    assert granted({PIPE_SOURCES_VARIABLE: value}).pipe_sources is expected
    assert granted({}) == REFUSE


def test_a_variable_that_is_neither_is_named():
    with pytest.raises(ConfigError, match=f"{ENV_INTERPOLATION_VARIABLE}='maybe': expected 1 \\(allow\\) or 0"):
        granted({ENV_INTERPOLATION_VARIABLE: "maybe"})


def test_the_flags_grant_for_the_block_only(monkeypatch):
    monkeypatch.delenv(PIPE_SOURCES_VARIABLE, raising=False)
    monkeypatch.setenv(ENV_INTERPOLATION_VARIABLE, "0")
    parser = argparse.ArgumentParser()
    add_opt_in_arguments(parser)
    opt_ins = from_args(parser.parse_args(["--allow-pipe-sources"]))
    assert opt_ins == OptIns(pipe_sources=True)
    with opt_ins.applied() as in_force:
        assert in_force == OptIns(pipe_sources=True) and os.environ[PIPE_SOURCES_VARIABLE] == "1"
    assert PIPE_SOURCES_VARIABLE not in os.environ and os.environ[ENV_INTERPOLATION_VARIABLE] == "0"
    assert from_args(parser.parse_args([])) == REFUSE


@pytest.mark.parametrize("entries", ["pipe:curl x", ["a.tar", "{pipe:cat x,b.tar}"]])
def test_a_pipe_source_is_refused_naming_file_key_and_flag(entries):
    with pytest.raises(ConfigError) as caught:
        check_pipe_sources(entries, "data.source", "run/config.yaml", REFUSE)
    message = str(caught.value)
    where = "data.source" if isinstance(entries, str) else "data.source[1]"
    assert message.startswith(f"run/config.yaml: {where} = ") and "--allow-pipe-sources" in message
    check_pipe_sources(entries, "data.source", "run/config.yaml", ALLOW)


@pytest.mark.parametrize(
    ("tree", "where", "resolver"),
    [
        ({"train": {"output_dir": "${oc.env:HOME}/run"}}, "train.output_dir", "oc.env"),
        ({"data": {"source": ["x", "${oc.decode:${oc.env:X}}"]}}, "data.source[1]", "oc.decode"),
        ({"${oc.env:KEY}": 1}, "${oc.env:KEY}", "oc.env"),  # a key is read too
    ],
)
def test_a_resolver_is_refused_naming_the_key_and_the_resolver(tree, where, resolver):
    with pytest.raises(ConfigError, match=f"preset.yaml: {re.escape(where)} = .* calls the resolver '{resolver}'"):
        check_interpolations(tree, "preset.yaml", REFUSE)
    check_interpolations(tree, "preset.yaml", ALLOW)


def test_references_to_other_keys_and_plain_dollars_need_no_grant():
    check_interpolations({"a": "${train.output_dir}/x", "b": "costs $5", "c": "${not valid"}, "f.yaml", REFUSE)


def test_literal_strings_read_back_as_the_same_characters():
    tree = {"a": "${oc.env:HOME}", "b": ["\\${x}", "plain"], "c": 3}
    escaped = literal_strings(tree)
    assert OmegaConf.to_container(OmegaConf.create(escaped), resolve=True) == tree
