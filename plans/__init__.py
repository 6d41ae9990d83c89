"""Bluesky scan plans for ptychography (import path ``bluesky_ptycho.plans``).

Each plan writes the ``start["ptycho"]`` contract of DESIGN.md. Filled in by the live
reconstruction issue.
"""
