"""bluesky-ptycho: live ptychography (incremental ePIE) for Bluesky beamlines.

The engine core (:mod:`bluesky_ptycho.engine`) knows nothing of Bluesky or Tango; see
``docs/explanation/architecture.md`` for the layers.
"""

from bluesky_ptycho.engine import EPIE, EPIEOptions, ReconstructionState, reconstruct
from bluesky_ptycho.setup import ScanSetup

__all__ = ["EPIE", "EPIEOptions", "ReconstructionState", "ScanSetup", "reconstruct"]
__version__ = "0.1.0"
