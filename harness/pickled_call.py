"""A Ray Data map function whose real function and arguments travel as bytes, unpickled only where it runs.

Ray Data sends a dataset's whole plan to every process that holds it, and Train's `DatasetManager` and Ray Data's
`SplitCoordinator` unpickle it without ever running it. A function pickles as a reference to its module, and its
arguments as references to their classes' modules: `harness.stream.mask_rows` with a `MaskingStage` made both
processes import torch and the objectives before the first batch (seconds of every run's start on a small node).
Pickled to bytes behind this module, which imports nothing of the project, they load in the map tasks only.
"""

from __future__ import annotations

import pickle
from functools import lru_cache
from typing import Any


def pickled_call(batch: Any, call: bytes, **kwargs: Any) -> Any:
    """`fn(batch, *args, **kwargs)` for `(fn, args) = pickle.loads(call)`."""
    fn, args = _unpickled(call)
    return fn(batch, *args, **kwargs)


@lru_cache(maxsize=8)
def _unpickled(call: bytes) -> tuple[Any, tuple]:
    return pickle.loads(call)  # noqa: S301 - bytes that this project pickled into its own plan
