"""Numerics only: forward model, reconstruction state and the incremental ePIE.

Nothing here imports Bluesky, event-model, ophyd or Tango.
"""

from bluesky_ptycho.engine.epie import EPIE, EPIEOptions, reconstruct
from bluesky_ptycho.engine.state import ReconstructionState

__all__ = ["EPIE", "EPIEOptions", "ReconstructionState", "reconstruct"]
