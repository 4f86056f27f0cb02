"""Strict JSON out: what the library writes parses with any JSON reader.

Python's `json` writes `NaN`, `Infinity` and `-Infinity` for non-finite floats, tokens that are not JSON (RFC 8259)
and that strict readers (`jq`, JavaScript, Go, `json.loads(..., parse_constant=...)`) reject. Every JSON file the
library writes goes through `dumps`: non-finite numbers become `null`, numpy scalars and arrays plain numbers and
lists, and `allow_nan=False` makes anything that slipped through raise instead of writing an invalid file.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def finite(value: Any) -> Any:
    """`value` with every non-finite float (Python or numpy, at any depth of dicts / lists / tuples / arrays)
    replaced by None, and numpy scalars and arrays turned into Python numbers and lists."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if isinstance(value, np.ndarray):
        return finite(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(data: Any, **kwargs) -> str:
    """`json.dumps` of `finite(data)` with `allow_nan=False` (other keyword arguments as `json.dumps`)."""
    return json.dumps(finite(data), allow_nan=False, **kwargs)
