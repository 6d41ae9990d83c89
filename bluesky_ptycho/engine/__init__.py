"""Numerics only: forward model, reconstruction state, the incremental ePIE and its parallel
schemes.

Nothing here imports Bluesky, event-model, ophyd or Tango.
"""

from bluesky_ptycho.engine.epie import EPIE, EPIEOptions
from bluesky_ptycho.engine.oneshot import reconstruct
from bluesky_ptycho.engine.parallel import ParallelOptions, SynchronousEPIE
from bluesky_ptycho.engine.state import ReconstructionState

__all__ = [
    "EPIE",
    "EPIEOptions",
    "ParallelOptions",
    "ReconstructionState",
    "SynchronousEPIE",
    "reconstruct",
]
