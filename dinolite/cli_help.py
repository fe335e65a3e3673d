"""The ``--help`` layout every dinolite command shares: descriptions keep their line breaks (they hold
usage examples) and each option shows its default, unless its help text already states one."""

from __future__ import annotations

import argparse
import copy


def _shown_default(action: argparse.Action) -> str | None:
    """The default as ``--help`` prints it, or None when it says nothing (None, False, empty)."""
    default = action.default
    if not action.option_strings or default is None or default is False or default is argparse.SUPPRESS:
        return None
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default)) if default else None
    return str(default)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``RawDescriptionHelpFormatter`` plus ``(default: X)`` after every option whose default says
    something, including options declared without a help text.

    argparse's own ``ArgumentDefaultsHelpFormatter`` prints ``(default: None)`` / ``(default: False)``,
    which tell a reader nothing, skips options without help text, and loses the description's layout.
    """

    def _format_action(self, action: argparse.Action) -> str:
        if not (action.help and action.help.strip()) and _shown_default(action) is not None:
            action = copy.copy(action)  # the parser's own action stays as declared
            action.help = ""
            action.help = self._get_help_string(action)
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = _shown_default(action)
        if shown is None or "default" in text.lower():
            return text
        # the help string is %-formatted later: escape the value's own percent signs
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()
