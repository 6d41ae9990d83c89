"""Tango device server ``PtychoReconstruction`` (import path ``bluesky_ptycho.tango_device``).

A thin shell over :class:`bluesky_ptycho.callback.PtychoCallback` and
:class:`bluesky_ptycho.live.LiveReconstruction`: documents arrive over the bluesky 0MQ proxy or
from a replay, snapshots leave as attributes with change and data-ready events.

Two ways to run it:

* database-free, bound to loopback: ``bluesky-ptycho serve`` (:mod:`bluesky_ptycho.serve`);
* in a Tango database (``TANGO_HOST`` set, server registered): ``bluesky-ptycho-tango
  INSTANCE``, i.e. :func:`main`, the standard Tango server command line.

See ``docs/how-to/tango.md``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .device import EVENT_ATTRIBUTES, PtychoReconstruction

__all__ = ["EVENT_ATTRIBUTES", "SERVER_NAME", "PtychoReconstruction", "main"]

SERVER_NAME = "PtychoReconstruction"
"""The Tango server name, whatever the script is called (``SERVER_NAME/INSTANCE``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """The standard Tango server command line: ``bluesky-ptycho-tango INSTANCE [options]``.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default ``sys.argv[1:]``): the instance name,
        then any Tango server option (``-v4``, ``-nodb -dlist ...``, ``-ORBendPoint ...``,
        ``-file=...``).

    Returns
    -------
    int
        0 once the server has shut down.

    Notes
    -----
    The server registers as ``PtychoReconstruction/INSTANCE`` (not under the script's name), so
    the database entry is the same however it is launched.
    """
    from tango.server import run

    args = list(sys.argv[1:] if argv is None else argv)
    run((PtychoReconstruction,), args=[SERVER_NAME, *args])
    return 0
