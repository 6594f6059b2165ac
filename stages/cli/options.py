"""Click options generated from a config dataclass whose fields are `pipeline.runtime.settings.setting`s.

Every option defaults to None ("not given"), so a preset can fill it before the dataclass's own default does;
the help shows the dataclass default (and the paper's value where it differs). Bad values are click usage
errors: exit 2, one line naming the option and the value.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import click

from pipeline.runtime.settings import outside


class Number(click.ParamType):
    """An int or a float, finite, within an optional range (click's FloatRange lets nan through)."""

    def __init__(self, kind: type, low=None, high=None, low_open=False, high_open=False):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.name = "integer" if kind is int else "float"

    def _range(self) -> str:
        lo = "" if self.low is None else f"{self.low}{'<' if self.low_open else '<='}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='}{self.high}"
        return f"{lo}x{hi}"

    def convert(self, value, param, ctx):
        if isinstance(value, self.kind) and not isinstance(value, bool):
            v = value
        else:
            try:
                v = self.kind(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if outside(v, self.low, self.high, self.low_open, self.high_open):
            self.fail(f"{value!r} is not in the range {self._range()}", param, ctx)
        return v

    def get_metavar(self, param, ctx=None):
        if self.low is None and self.high is None:
            return self.name.upper()
        return f"{self.name.upper()} {self._range()}"


class IntList(click.ParamType):
    """Comma-separated non-negative integers, e.g. milestones `90,120`."""
    name = "integers"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            self.fail(f"{value!r} is not a comma-separated list of non-negative integers (e.g. 90,120)", param, ctx)
        return tuple(int(p) for p in parts)


def _option(f, hint, preset: dict, rename: str | None):
    meta = f.metadata
    name = rename or "--" + f.name.replace("_", "-")
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = typing.get_args(hint)[0] if optional else hint  # `int | None` -> int
    kwargs = {"default": None}
    if f.default is MISSING:
        kwargs["required"] = True
    if base is bool:
        decls = [meta["flag"] or f"{name}/--no-{f.name.replace('_', '-')}"]
    else:
        decls = [name] if rename is None else [name, f.name]
        if meta["choices"]:
            kwargs["type"] = click.Choice(list(meta["choices"]))
        elif base in (int, float):
            kwargs["type"] = Number(base, *meta["range"])
        elif base is Path:
            kwargs["type"] = click.Path(path_type=Path)
        elif typing.get_origin(base) is tuple:
            kwargs["type"] = IntList()
    help_text = meta["help"]
    if f.default is not MISSING:
        default = preset.get(f.name, f.default)
        shown = (meta["shown"] if f.name not in preset else None) or (
            ",".join(map(str, default)) if isinstance(default, tuple) else default)
        if base is bool and (meta["shown"] is None or f.name in preset):
            on, off = decls[0].split("/")
            shown = on if default else off
        # written into the help (click would show a string default in parentheses)
        paper = f"; paper: {meta['paper']}" if meta["paper"] is not None else ""
        help_text += f"  [default: {shown}{paper}]"
    kwargs["help"] = help_text
    return click.option(*decls, **kwargs)


def config_options(config_cls, only: tuple[str, ...] | None = None, preset: dict | None = None,
                   rename: dict | None = None):
    """Decorator: one option per field of `config_cls` with `cli` set, in field order. `only`: just these fields;
    `preset`: defaults shown instead of the dataclass's (the command applies the same preset); `rename`: field ->
    option name (the parameter keeps the field's name)."""
    hints, preset, rename = typing.get_type_hints(config_cls), preset or {}, rename or {}
    made = [_option(f, hints[f.name], preset, rename.get(f.name)) for f in fields(config_cls)
            if f.metadata.get("cli") and (only is None or f.name in only)]

    def decorate(fn):
        for opt in reversed(made):
            fn = opt(fn)
        return fn
    return decorate


def config_from_options(config_cls, options: dict):
    """The config of the options given: an option left out (None) keeps the dataclass default."""
    return config_cls(**{k: v for k, v in options.items() if v is not None})
