"""Full constructor signatures for classes that pass options on to their base through ``**kwargs``.

An algorithm (``FixMatch(threshold=..., **kwargs)``) or an attack (``DeNeBAttack(eps=..., **kwargs)``)
declares only its own options and hands the rest to the base class. :func:`publish_signature`
walks those ``**kwargs`` up the MRO and sets ``cls.__signature__`` to every keyword option with
its resolved type and default, so ``inspect.signature(FixMatch)``, IDEs, jsonargparse (the config
parsers and ``ssl-backdoor fit --model FixMatch --help``) and the override tests see one explicit
signature. :func:`bind_options` resolves a mapping of options against it (defaults filled in): what
``results.json`` records as the arguments a row was built with.
"""

from __future__ import annotations

import inspect
import sys
import typing
from typing import Any, Iterable, Mapping

__all__ = ["bind_options", "function_parameters", "keyword_parameters", "publish_signature"]

def _resolved_hints(func: Any) -> dict[str, Any]:
    """Annotations of ``func`` as types (``from __future__ import annotations`` leaves strings)."""
    module = sys.modules.get(getattr(func, "__module__", ""), None)
    try:
        return typing.get_type_hints(func, globalns=getattr(module, "__dict__", None))
    except Exception:  # an annotation that does not resolve stays as written
        return dict(getattr(func, "__annotations__", {}))


def keyword_parameters(cls: type, exclude: Iterable[str] = ()) -> dict[str, inspect.Parameter]:
    """Every option of ``cls``'s constructor: its own ``__init__`` parameters and, while an
    ``__init__`` forwards ``**kwargs``, those of the classes above it; keyword-only, types resolved."""
    out: dict[str, inspect.Parameter] = {}
    skip = set(exclude)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        merged = klass.__dict__.get("__signature__")
        if isinstance(merged, inspect.Signature):  # published: already merged up the whole chain
            params = list(merged.parameters.values())
            forwards = False
        else:
            params = list(inspect.signature(init).parameters.values())
            forwards = any(p.kind is p.VAR_KEYWORD for p in params)
            hints = _resolved_hints(init)
            params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in params]
        extra = klass.__dict__.get("signature_options")  # options a mixin takes out of **kwargs
        if extra is not None:
            params = params + [p.replace(annotation=_resolved_hints(extra).get(p.name, p.annotation))
                               for p in inspect.signature(extra).parameters.values()]
        for p in params:
            if p.name == "self" or p.name in out or p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[p.name] = p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        if not forwards:
            break
    return out


def function_parameters(func: Any, exclude: Iterable[str] = ()) -> dict[str, inspect.Parameter]:
    """The named parameters of a function (types resolved, keyword-only), less ``exclude``."""
    hints = _resolved_hints(func)
    skip = set(exclude)
    return {p.name: p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(func).parameters.values()
            if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def publish_signature(cls: type, exclude: Iterable[str] = ()) -> type:
    """Set ``cls.__signature__`` to ``(*, every option)`` when the ``__init__`` it runs (its own or
    a mixin's) forwards ``**kwargs`` (called from the bases' ``__init_subclass__``). ``inspect.signature(cls)``
    reads it; ``cls.__init__`` keeps its own (Lightning's ``save_hyperparameters`` reads the
    caller's frame by that one)."""
    init = next((k.__dict__["__init__"] for k in cls.__mro__ if "__init__" in k.__dict__), None)
    if init is None:
        return cls
    if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
        return cls
    params = keyword_parameters(cls, exclude)
    cls.__signature__ = inspect.Signature(list(params.values()))
    return cls


def bind_options(cls: type, options: Mapping[str, Any], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``options`` with every other constructor option of ``cls`` at its default: the arguments an
    instance built from ``options`` received (an option without a default and not given is left out)."""
    params = keyword_parameters(cls, exclude)
    out = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    out.update(options)
    return out
