"""The ``panel`` subcommand of ``bluesky-ptycho``: the operator's Taurus panel.

``bluesky-ptycho panel [DEVICE]`` opens :mod:`bluesky_ptycho.panel` for a
``PtychoReconstruction`` device (default ``bluesky/ptycho/1`` through ``TANGO_HOST``; the
``tango-nodb://HOST:PORT/...`` name ``bluesky-ptycho serve`` prints for a database-free
server). Needs the ``gui`` extra.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_panel_parser"]


def add_panel_parser(sub: Any) -> None:
    """Add ``panel`` to the ``bluesky-ptycho`` subparsers ``sub``."""
    from bluesky_ptycho.panel import add_arguments

    panel = sub.add_parser(
        "panel",
        help="open the operator's Taurus panel for a PtychoReconstruction device (gui extra)",
        description="An operator's Taurus panel for a PtychoReconstruction Tango device: images "
        "with physical axes, scan positions, error and validation ratio over time, State, "
        "Status, Start/Stop/Reset/Save/Replay, memorized set-points.",
    )
    add_arguments(panel)
    panel.set_defaults(func=_panel)


def _panel(args: argparse.Namespace) -> int:
    try:
        import pyqtgraph  # noqa: F401
        import taurus  # noqa: F401
        from taurus.external.qt import Qt  # noqa: F401
    except ImportError as exc:
        print(
            f"error: the panel needs the gui extra (pip install 'bluesky-ptycho[gui]'): {exc}",
            file=sys.stderr,
        )
        return 2
    from bluesky_ptycho.panel import run

    return run(args)
