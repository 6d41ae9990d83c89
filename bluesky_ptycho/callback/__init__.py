"""``PtychoCallback``: the RunEngine's documents in, a live reconstruction out.

The package's modules: :mod:`~bluesky_ptycho.callback.router` (the document router,
``PtychoCallback``), :mod:`~bluesky_ptycho.callback.runs` (status and record types, rejection
tally, loss counting, the detector-shape vote), :mod:`~bluesky_ptycho.callback.run_state` (one
run's state) and :mod:`~bluesky_ptycho.callback.frame_work` (the background frame worker).
"""

from __future__ import annotations

from bluesky_ptycho.callback.router import (
    CallbackStatus,
    PatternRecord,
    PtychoCallback,
    Rejection,
    ScanSetup,
)

__all__ = ["CallbackStatus", "PatternRecord", "PtychoCallback", "Rejection", "ScanSetup"]
