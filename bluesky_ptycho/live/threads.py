"""Thread helpers of the live worker."""

from __future__ import annotations

import os
import threading

__all__ = ["lower_thread_priority"]


def lower_thread_priority(nice: int) -> bool:
    """Make the calling thread nicer by ``nice`` (Linux threads have their own niceness).

    Parameters
    ----------
    nice : int
        Niceness to add (the result is capped at 19); 0 or less changes nothing.

    Returns
    -------
    bool
        False where the platform does not allow it; nothing else changes then.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (OSError, AttributeError):
        return False
    return True
