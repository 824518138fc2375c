"""Results never hold NaN as a number: a metric that is not finite is recorded as ``null``.

JSON has no NaN or infinity (Python writes the non-standard ``NaN`` token, which strict readers
refuse, and a table would print it as if it were a measurement). A metric that cannot be computed
(an ASR over zero eligible images) or that is not finite is ``None``: "not measured", shown as
"n/a" by the report.
"""

from __future__ import annotations

import math
from typing import Any


def finite_numbers(value: Any) -> Any:
    """``value`` with every float (and 0-d number) that is NaN or infinite, at any depth of dicts,
    lists and tuples, replaced by ``None``."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(finite_numbers(v) for v in value)
    try:  # numpy / torch scalars
        number = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(number) else None
