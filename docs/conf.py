"""Sphinx configuration: the API reference is built from the docstrings (autodoc + napoleon).

Build: ``python -m sphinx -b html -W --keep-going docs docs/_build/html`` (``pip install -e '.[docs]'``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # document the tree's sources even without an install

from mixq._version import __version__  # noqa: E402

project = "mixq"
author = "mixq authors"
copyright = "mixq authors, Apache-2.0"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",  # ARCHITECTURE.md and CHANGELOG.md are included as Markdown
]

source_suffix = {".rst": "restructuredtext"}  # Markdown only through the includes
root_doc = "index"
exclude_patterns = ["_build", "*.md"]  # the Markdown pages are included by architecture.rst
# `name` in a docstring is a cross-reference where the name is documented, code otherwise
default_role = "py:obj"

autodoc_default_options = {
    "members": True,
    "undoc-members": True,  # a name in a package's __all__ is public even without a docstring
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # defaults as written (W8, not FixedPoint(bits=8, ...))
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = True

myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"mixq {__version__}"
html_static_path: list[str] = []
