"""Live reconstruction: frames arrive while a worker thread iterates the engine.

:class:`LiveReconstruction` is the facade; it wires together collaborators that each do one
thing and can be used (and tested) on their own:

* :mod:`~bluesky_ptycho.live.staging`: ``submit`` copies frames into preallocated chunks.
* :mod:`~bluesky_ptycho.live.pacer`: a thread-free :class:`~bluesky_ptycho.live.pacer.Pacer`
  runs one chunk of updates at a time as the :class:`PacingPolicy` says.
* :mod:`~bluesky_ptycho.live.guard`: the divergence guard rolls back to the last good state
  and finds the pattern behind a divergence (:class:`GuardPolicy`).
* :mod:`~bluesky_ptycho.live.quarantine`: implausible frames are kept aside
  (:class:`QuarantinePolicy`, :class:`QuarantinedFrame`).
* :mod:`~bluesky_ptycho.live.publisher`: numbered :class:`Snapshot` objects to observers.
* :mod:`~bluesky_ptycho.live.phase`: the :class:`Phase` enum and its allowed transitions.
* :mod:`~bluesky_ptycho.live.options`: :class:`LiveOptions` and :class:`PacingPolicy`.

Nothing here imports Bluesky, event-model, ophyd or Tango.
"""

from __future__ import annotations

from bluesky_ptycho.live.guard import GuardPolicy
from bluesky_ptycho.live.options import PACING_MODES, LiveOptions, PacingPolicy
from bluesky_ptycho.live.phase import PHASES, Phase
from bluesky_ptycho.live.publisher import Snapshot
from bluesky_ptycho.live.quarantine import QuarantinedFrame, QuarantinePolicy
from bluesky_ptycho.live.reconstruction import LiveReconstruction, LiveStatus
from bluesky_ptycho.live.record import PatternRecord
from bluesky_ptycho.live.threads import lower_thread_priority

__all__ = [
    "PACING_MODES",
    "PHASES",
    "GuardPolicy",
    "LiveOptions",
    "LiveReconstruction",
    "LiveStatus",
    "PacingPolicy",
    "PatternRecord",
    "Phase",
    "QuarantinePolicy",
    "QuarantinedFrame",
    "Snapshot",
    "lower_thread_priority",
]
