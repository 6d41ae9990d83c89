"""Tango device server ``PtychoReconstruction`` (import path ``bluesky_ptycho.tango_device``).

A thin shell over :class:`bluesky_ptycho.live.LiveReconstruction`; filled in by the Tango issue.
"""
