"""A Ray Data map function whose real function and arguments travel as bytes, unpickled only where it runs.

Ray Data sends a dataset's whole plan to every process that holds it, and Train's `DatasetManager` and Ray Data's
`SplitCoordinator` unpickle it without ever running it. A function pickles as a reference to its module, and its
arguments as references to their classes' modules: `harness.stream.mask_rows` with a `MaskingStage` made both
processes import torch and the objectives before the first batch (seconds of every run's start on a small node).
Pickled to bytes behind this module, which imports nothing of the project, they load in the map tasks only.

Ray cancels a running task (Ray Data does, for the tasks in flight when a stream ends) by raising KeyboardInterrupt
in it. Raised inside that first unpickling, it would cut torch's import in half and leave the process, which Ray
keeps for later tasks, failing every one of them ("partially initialized module 'torch'"). So the unpickling holds
the interrupt back and raises it once the imports are whole.
"""

from __future__ import annotations

import pickle
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any


def pickled_call(batch: Any, call: bytes, **kwargs: Any) -> Any:
    """`fn(batch, *args, **kwargs)` for `(fn, args) = pickle.loads(call)`."""
    fn, args = _unpickled(call)
    return fn(batch, *args, **kwargs)


@lru_cache(maxsize=8)
def _unpickled(call: bytes) -> tuple[Any, tuple]:
    with interrupts_held_back():
        return pickle.loads(call)  # noqa: S301 - bytes that this project pickled into its own plan


@contextmanager
def interrupts_held_back() -> Iterator[None]:
    """Run the block whole: a SIGINT (Ray's cancellation of a running task) that arrives meanwhile raises
    KeyboardInterrupt after it. Only the main thread receives signals; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt("cancelled while the map function's modules were imported")
