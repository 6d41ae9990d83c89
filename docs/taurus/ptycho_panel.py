"""Launcher kept for old instructions: the panel is now ``bluesky-ptycho panel [DEVICE]``.

The operator's panel lives in the package (:mod:`bluesky_ptycho.panel`, the ``gui`` extra);
see ``docs/how-to/panel.md``. This file only forwards its arguments:

    pip install "bluesky-ptycho[gui]"
    python docs/taurus/ptycho_panel.py tango-nodb://127.0.0.1:PORT/bluesky/ptycho/1
    # is the same as
    bluesky-ptycho panel tango-nodb://127.0.0.1:PORT/bluesky/ptycho/1
"""

from __future__ import annotations

import sys

from bluesky_ptycho.panel import main

if __name__ == "__main__":
    sys.exit(main())
