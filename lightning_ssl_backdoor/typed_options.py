"""Config blocks typed by the signature of what they build: one parsing path for every command.

A config block (an experiment's ``model`` or ``surrogate``, each ``init_args`` of an algorithm,
attack or defense, ``poison``'s ``attack``) is a mapping of constructor options. This module types
it against the constructor's parameters (:func:`lightning_ssl_backdoor.signatures.keyword_parameters`)
with jsonargparse, the parser ``fit`` uses through LightningCLI:

- values arrive as their declared types (``--model.weak_flip false`` is ``False``, ``--model.lr 0.1``
  is ``0.1``): a command-line string is read as YAML first, as jsonargparse reads any command-line
  value, unless the option is a string;
- an unknown key, a wrong type or a non-finite float stops the run before any work with one
  sentence (a :class:`~lightning_ssl_backdoor.errors.ConfigError`, exit 2) that names the key, the
  expected type, the value given and where it came from (a config file or the command line);
- a block given whole on the command line (``--model '{arch: tiny_cnn}'``) merges into the block
  key by key, as a dotted override (``--model.arch tiny_cnn``) does: nothing is dropped silently.
"""

from __future__ import annotations

import inspect
import math
import typing
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from lightning_ssl_backdoor import safe_yaml
from lightning_ssl_backdoor.errors import ConfigError

__all__ = ["CLI", "BlockOverrides", "apply_overrides", "split_block_overrides", "type_name", "typed_options"]

#: where a value typed on the command line came from, as error messages say it
CLI = "the command line"


# ----------------------------------------------------------------------------- command line
class BlockOverrides(dict):
    """block name -> list of ``(key or None, raw string)`` taken from the command line, in order
    (``None``: the whole block was given as one mapping)."""


def split_block_overrides(argv: Sequence[str], blocks: Iterable[str]) -> tuple[list[str], BlockOverrides]:
    """Take ``--block VALUE``, ``--block=VALUE``, ``--block.key VALUE`` and ``--block.key=VALUE`` for
    each of ``blocks`` out of ``argv``; returns the rest of ``argv`` and the overrides."""
    names = tuple(blocks)
    rest: list[str] = []
    found = BlockOverrides({b: [] for b in names})
    i, argv = 0, list(argv)
    while i < len(argv):
        arg = argv[i]
        opt, eq, value = arg.partition("=")
        block, _, key = opt[2:].partition(".") if opt.startswith("--") else ("", "", "")
        if block in names and not block.endswith("+"):
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{opt} needs a value on the command line (e.g. {opt} VALUE).")
                value = argv[i + 1]
                i += 1
            found[block].append((key or None, value))
        else:
            rest.append(arg)
        i += 1
    return rest, found


def _yaml(raw: str, where: str) -> Any:
    try:
        return safe_yaml.safe_load(raw)  # bounded: an alias bomb is refused
    except yaml.YAMLError as e:
        mark = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{where}: cannot read {raw!r} from {CLI} as YAML ({mark}).") from None


def apply_overrides(block: str, base: Optional[Mapping[str, Any]], overrides: Sequence[tuple[Optional[str], str]],
                    base_origin: str, params: Optional[Mapping[str, inspect.Parameter]] = None
                    ) -> tuple[dict[str, Any], dict[str, str]]:
    """``base`` (the block as the config files give it) with the command-line ``overrides`` applied
    in order, and where each key came from. A whole-block mapping merges key by key; a dotted key
    ``a.b`` sets ``b`` inside the mapping ``a``. Command-line strings are read as YAML unless
    ``params`` declares the option a string."""
    if base is not None and not isinstance(base, Mapping):
        raise ConfigError(f"{block} must be a mapping of options, got {base!r} (from {base_origin}).")
    values = dict(base or {})
    origins = {k: base_origin for k in values}
    for key, raw in overrides:
        if key is None:
            given = _yaml(raw, block)
            if given is None:
                continue
            if not isinstance(given, Mapping):
                raise ConfigError(f"--{block} takes a mapping such as '{{key: value}}', got {raw!r}; "
                                  f"set one option with --{block}.KEY VALUE.")
            for k, v in given.items():
                values[str(k)] = v
                origins[str(k)] = CLI
            continue
        head, _, tail = key.partition(".")
        value: Any = raw if params is not None and _is_string(params.get(head)) and not tail else _yaml(raw, f"{block}.{key}")
        if tail:
            inner = values.get(head)
            inner = dict(inner) if isinstance(inner, Mapping) else {}
            inner[tail] = value
            value = inner
        values[head] = value
        origins[head] = CLI
    return values, origins


def _is_string(p: Optional[inspect.Parameter]) -> bool:
    if p is None:
        return False
    t = p.annotation
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return t is str or (typing.get_origin(t) is typing.Union and args == [str])


# ----------------------------------------------------------------------------- typing
def type_name(t: Any) -> str:
    """A type as an error message says it: ``bool``, ``float or null``, ``list of int``, ``mapping``."""
    if t is inspect.Parameter.empty or t is Any:
        return "any value"
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Union:
        names = [type_name(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(names))
        return f"{text} or null" if type(None) in args else text
    if origin in (list, tuple, Sequence, typing.Sequence) or t in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping, typing.Mapping) or t is dict:
        return "mapping"
    if getattr(origin, "__name__", "") == "Literal":
        return "one of " + ", ".join(repr(a) for a in args)
    return getattr(t, "__name__", str(t))


def _parser_type(t: Any) -> Any:
    """The type jsonargparse checks a value against: classes it cannot build from a config (an
    ``nn.Module`` instance, a tensor) are read as a mapping or any value."""
    if t is inspect.Parameter.empty:
        return Any
    args = typing.get_args(t)
    if any(isinstance(a, type) and a.__module__.startswith("torch") for a in (t, *args)):
        return Optional[dict] if type(None) in args or t is dict else Any
    return t


def _check_finite(value: Any, where: str, origin: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value} (from {origin}).")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}", origin)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]", origin)


def typed_options(params: Mapping[str, inspect.Parameter], values: Mapping[str, Any], where: str, owner: str,
                  origins: Optional[Mapping[str, str]] = None, default_origin: str = "the config") -> dict[str, Any]:
    """``values`` checked and converted to the types of ``params`` (the constructor options of
    ``owner``); unknown keys, wrong types and non-finite floats raise one-sentence ConfigErrors."""
    origins = dict(origins or {})
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of {owner}'s options, got {values!r}.")
    unknown = [k for k in values if k not in params]
    if unknown:
        k = unknown[0]
        near = [p for p in params if p.lower().replace("_", "") == str(k).lower().replace("_", "")]
        hint = f"; did you mean {near[0]!r}" if near else f"; its options are {', '.join(sorted(params))}"
        raise ConfigError(f"{where}.{k}: {owner} has no option {k!r} (from {origins.get(k, default_origin)}){hint}.")
    out: dict[str, Any] = {}
    for k, v in values.items():
        p = params[k]
        origin = origins.get(k, default_origin)
        parser = _value_parser(_parser_type(p.annotation))
        if parser is None:  # a type jsonargparse cannot check: keep the value as given
            out[k] = v
            continue
        try:
            ns = parser.parse_object({"value": _copy(v)})
        except Exception:
            raise ConfigError(f"{where}.{k} must be {type_name(p.annotation)} ({owner}), got {v!r} "
                              f"(from {origin}).") from None
        got = ns["value"]
        out[k] = got.as_dict() if hasattr(got, "as_dict") else got
        _check_finite(out[k], f"{where}.{k}", origin)
    return out


_PARSERS: dict[str, Any] = {}


def _value_parser(t: Any) -> Any:
    """A jsonargparse parser of one value of type ``t`` (built once per type), or None when
    jsonargparse cannot check that type."""
    from jsonargparse import ArgumentParser

    key = repr(t)
    if key not in _PARSERS:
        parser = ArgumentParser(exit_on_error=False)
        try:
            parser.add_argument("--value", type=t)
        except Exception:
            parser = None
        _PARSERS[key] = parser
    return _PARSERS[key]


def _copy(v: Any) -> Any:
    """A deep copy of plain config data (jsonargparse converts values in place)."""
    if isinstance(v, Mapping):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v
