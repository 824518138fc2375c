"""Bounded YAML: a document whose aliases expand to more than ``MAX_YAML_NODES`` nodes is refused.

YAML anchors and aliases let a few hundred bytes describe a structure of billions of nodes (the
"billion laughs" document: ``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, ...). PyYAML builds it
with shared references, which is cheap, but anything that walks it (jsonargparse's merging and
type checking, ``json.dumps``, a deep copy) expands every alias and runs out of memory. Here the
composed node graph is measured first: the size of each node *with its aliases expanded* is
counted once per node (memoised), so the measurement costs the size of the document, not of its
expansion, and a document above the budget, or one whose alias refers to a node that contains it,
is refused with one sentence (:class:`~lightning_ssl_backdoor.errors.ConfigError`).

:func:`install` puts the bound into jsonargparse's YAML loader (used for ``-c`` config files and
for every YAML value given on the command line); the command line's error boundary calls it
before any parsing. :func:`safe_load` is a bounded ``yaml.safe_load`` for the package's own reads.
"""

from __future__ import annotations

from typing import Any

from lightning_ssl_backdoor.errors import ConfigError

#: nodes (scalars, sequences, mappings) a YAML document may hold once its aliases are expanded; an
#: experiment config has a few hundred, a long explicit ``rows`` list a few thousand
MAX_YAML_NODES = 100_000


def expanded_size(root: Any, budget: int = MAX_YAML_NODES) -> int:
    """Number of nodes of the composed YAML node ``root`` with every alias expanded.

    Raises :class:`ConfigError` once the count exceeds ``budget`` or when a node contains itself.
    """
    import yaml

    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    # iterative post-order walk: (node, children pushed?)
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children = (list(node.value) if isinstance(node, yaml.SequenceNode)
                    else [c for pair in node.value for c in pair])
        if not expanded:
            if key in on_path:
                raise ConfigError(_refusal("an alias refers to a node that contains it (a recursive document)", ""))
            on_path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        total = 1
        for c in children:
            if id(c) not in sizes:  # a child still being expanded higher up: a cycle
                raise ConfigError(_refusal("an alias refers to a node that contains it (a recursive document)", ""))
            total += sizes[id(c)]
            if total > budget:
                raise ConfigError(_refusal(f"its aliases expand to more than {budget:,} nodes", " (an alias bomb)"))
        sizes[key] = total
        on_path.discard(key)
    return sizes[id(root)]


def _refusal(why: str, what: str) -> str:
    return (f"a YAML document was refused because {why}{what}; "
            "write the values out or use fewer anchors and aliases.")


def bounded(loader_class: type) -> type:
    """A subclass of the PyYAML loader ``loader_class`` that checks :func:`expanded_size` of each
    document before constructing it."""

    class Bounded(loader_class):  # type: ignore[misc, valid-type]
        def get_single_data(self):  # noqa: ANN201 - PyYAML's interface
            node = self.get_single_node()
            if node is None:
                return None
            expanded_size(node)
            return self.construct_document(node)

        def get_data(self):  # noqa: ANN201
            node = self.get_node()
            if node is None:
                return None
            expanded_size(node)
            return self.construct_document(node)

    Bounded.__name__ = Bounded.__qualname__ = f"Bounded{loader_class.__name__}"
    return Bounded


def safe_load(stream: Any) -> Any:
    """``yaml.safe_load`` with the node budget."""
    import yaml

    return yaml.load(stream, Loader=bounded(getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def install() -> None:
    """Make jsonargparse's YAML loader (``-c`` files and YAML values on the command line) bounded.

    jsonargparse builds its loader class once and keeps it in a module global; this replaces that
    class by its bounded subclass (idempotent)."""
    from jsonargparse import _loaders_dumpers as ld

    current = ld.get_yaml_default_loader()
    if not getattr(current, "_ssl_backdoor_bounded", False):
        cls = bounded(current)
        cls._ssl_backdoor_bounded = True
        ld.yaml_default_loader = cls
