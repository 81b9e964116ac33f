"""Flags that also read an env var: the one rule both entry points follow (docs/CONTRACTS.md, "Command lines").

Precedence: flag > env var > default; the env var is the flag name in UPPER_SNAKE_CASE, with no prefix.
Each entry point keeps its own flag table, its own validation and its own error messages.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Flag", "add_flags", "env_var_name", "truthy"]

_TRUTHY = frozenset({"1", "true", "yes", "on"})
_FALSY = frozenset({"", "0", "false", "no", "off"})


def env_var_name(flag: str) -> str:
    """`--node-name` (or `node-name`) reads `NODE_NAME`."""
    return flag.lstrip("-").replace("-", "_").upper()


def truthy(text: str) -> bool:
    """A switch's env var: 1/true/yes/on, or 0/false/no/off/empty, in any case. Anything else raises
    ValueError: a typo such as `STANDALONE=ture` must not quietly mean off."""
    word = text.strip().lower()
    if word in _TRUTHY or word in _FALSY:
        return word in _TRUTHY
    raise ValueError(f"{text!r} is not a switch value (1, true, yes, on; 0, false, no, off, or empty)")


@dataclass(frozen=True, slots=True)
class Flag:
    name: str  # without the leading "--"
    default: str  # a string even for typed flags: argparse runs `type` on it too, so a bad env value is a usage error
    help: str
    type: Callable[[str], object] = str
    choices: tuple[str, ...] = ()
    switch: bool = False  # takes no value: on when given, or when its env var is truthy

    @property
    def option(self) -> str:
        return f"--{self.name}"

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env_var(self) -> str:
        return env_var_name(self.name)

    @property
    def help_text(self) -> str:
        # Only value flags print a default: a switch is simply off unless turned on, and a choice flag's values
        # are already in the usage line (the extender's --log-level help has always read just "env LOG_LEVEL").
        notes = f"env {self.env_var}"
        if not (self.switch or self.choices):
            notes += f", default {self.default!r}"
        return f"{self.help} ({notes})" if self.help else notes


def add_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag], env: Mapping[str, str]) -> None:
    """Add `flags` to `parser`; the env var's value (else the flag's default) becomes the argparse default, so a
    flag on the command line wins, then the env var, then the default."""
    for flag in flags:
        raw = env.get(flag.env_var, flag.default)
        if flag.switch:
            try:
                on = truthy(raw)
            except ValueError as err:
                parser.error(f"env {flag.env_var} (for {flag.option}): {err}")
            parser.add_argument(flag.option, dest=flag.dest, action="store_true", default=on, help=flag.help_text)
            continue
        parser.add_argument(
            flag.option,
            dest=flag.dest,
            type=_one_of(flag.choices, flag.type) if flag.choices else flag.type,
            default=raw,
            choices=flag.choices or None,
            # The env var's name is the metavar, so --help shows which variable to set; choices show themselves.
            metavar=None if flag.choices else flag.env_var,
            help=flag.help_text,
        )


def _one_of(choices: tuple[str, ...], convert: Callable[[str], object]) -> Callable[[str], object]:
    """`convert`, refusing a value outside `choices`. argparse checks `choices` only on the command line, never
    on a default, so without this a bad env value would reach the program unchecked."""

    def check(text: str) -> object:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return convert(text)

    return check
