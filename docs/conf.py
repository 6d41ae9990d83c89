"""Sphinx configuration: MyST Markdown pages and the API reference from the docstrings.

Build (warnings are errors, as in CI)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going docs docs/_build/html
"""

from __future__ import annotations

import os
from importlib.metadata import version as _version

os.environ.setdefault("MPLBACKEND", "Agg")

project = "bluesky-ptycho"
author = "bluesky-ptycho developers"
copyright = "bluesky-ptycho developers"
release = _version("bluesky-ptycho")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "notebooks/.ipynb_checkpoints", "taurus/*.py"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# numpy-style docstrings; Attributes as fields, so dataclass fields are not listed twice
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True
napoleon_use_rtype = False

autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
# optional extras the API pages may not have at build time
autodoc_mock_imports = ["cupy", "mpi4py"]

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
}
# the reference must build offline (CI): intersphinx only when asked for
if not os.environ.get("BLUESKY_PTYCHO_DOCS_INTERSPHINX"):
    intersphinx_mapping = {}

nitpicky = False
suppress_warnings = ["myst.header"]

html_theme = "pydata_sphinx_theme"
html_title = "bluesky-ptycho"
html_theme_options = {"navigation_depth": 2, "show_toc_level": 2}
