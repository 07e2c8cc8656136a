"""Sphinx configuration: the pages of docs/ (Markdown, through MyST) and the API reference built
from the docstrings (autodoc, Google style through napoleon). ``make docs`` builds it into
``docs/_build/html`` and fails on any warning."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "glif_jax"
author = "the glif_jax authors"
copyright = "2026, the glif_jax authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # dataclass fields are documented once, in their Attributes
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}

html_theme = "alabaster"
html_title = "glif_jax"
