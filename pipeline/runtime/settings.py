"""Settings with one source of truth: a config dataclass field carries its default, its help, its valid range or
choices and the paper's value where that differs; the command-line options are generated from the fields
(stages/cli/options.py), so a default is written once.

    lr: float = setting(0.01, "SGD learning rate.", low=0, low_open=True)
"""
from __future__ import annotations

import math
from dataclasses import field


def setting(default, help: str, *, paper=None, shown: str | None = None, choices=None, low=None, high=None,
            low_open: bool = False, high_open: bool = False, flag: str | None = None, cli: bool = True):
    """A dataclass field with what an option needs to know.

    paper     the paper's value, shown beside the default when it differs
    shown     how to show a default that is resolved later (None defaults: "the recipe's", "10 x classes")
    choices   the allowed values (a click.Choice)
    low/high  the allowed range of a number; *_open excludes the bound. Numbers are always finite.
    flag      the switch pair of a boolean, e.g. "--small-input/--imagenet-stem" (default: --name/--no-name)
    cli       False: a setting with no command-line option
    """
    return field(default=default, metadata={
        "help": help, "paper": paper, "shown": shown, "choices": choices, "range": (low, high, low_open, high_open),
        "flag": flag, "cli": cli})


def outside(value: float, low=None, high=None, low_open: bool = False, high_open: bool = False) -> bool:
    """Whether `value` breaks a setting's range (`setting(low=..., high=...)`); non-finite numbers always do.
    The one range check: the CLI's usage errors and the stages' runtime guards both call it."""
    if not math.isfinite(value):
        return True
    return ((low is not None and (value <= low if low_open else value < low))
            or (high is not None and (value >= high if high_open else value > high)))
