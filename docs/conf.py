"""Sphinx configuration: user guide and experiment pages in Markdown (MyST), the API reference by autodoc.

The API pages are written when the build starts, from each public module's ``__all__`` (``docs/api/<module>.rst``,
not committed), so a name added to ``__all__`` is documented without touching the docs. Figures are read
from the repository's top-level ``figures/`` folder by relative path; Sphinx copies the ones a page shows.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

import importlib
import inspect
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up lines, not warnings

import pneumoxai  # noqa: E402

project = "pneumoxai"
author = "the pneumoxai authors"
copyright = "the pneumoxai authors; chest X-ray images: Kermany et al. 2018, CC BY 4.0"
release = version = pneumoxai.__version__

extensions = ["sphinx.ext.autodoc", "numpydoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
suppress_warnings = ["myst.header"]  # pages included from the repository root start below level 1

autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc sections state types and shapes
numpydoc_show_class_members = False  # autodoc's :members: lists them once
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_title = f"pneumoxai {release}"
html_theme_options = {"page_width": "1180px", "sidebar_width": "240px"}

# The public modules, in the order of CONTRIBUTING.md's layers; each gets one API page.
PUBLIC_MODULES = (
    "pneumoxai", "pneumoxai.errors", "pneumoxai.validation", "pneumoxai.files", "pneumoxai.run_folder",
    "pneumoxai.lungs", "pneumoxai.regions", "pneumoxai.metrics", "pneumoxai.outcomes", "pneumoxai.slices",
    "pneumoxai.evidence", "pneumoxai.audit", "pneumoxai.shift", "pneumoxai.referral", "pneumoxai.calibration",
    "pneumoxai.ensemble", "pneumoxai.data", "pneumoxai.config", "pneumoxai.models", "pneumoxai.predict",
    "pneumoxai.importing", "pneumoxai.explain", "pneumoxai.figures", "pneumoxai.report", "pneumoxai.pipeline",
    "pneumoxai.pipeline.shift", "pneumoxai.distributed", "pneumoxai.cli",
)


def _exports(module):
    mod = importlib.import_module(module)
    return {name: getattr(mod, name) for name in mod.__all__}


def _home(obj):
    """The public module whose page indexes ``obj``: of those exporting it, the one that defines it, else the first."""
    exporters = [m for m in PUBLIC_MODULES if any(value is obj for value in _exports(m).values())]
    module = getattr(obj, "__module__", None) or ""
    defining = [m for m in exporters if module == m or module.startswith(m + ".")]
    return max(defining, key=len) if defining else (exporters[0] if exporters else None)


def _directive(module, name, obj):
    """The autodoc directive for one public name; a re-export is shown without a second index entry."""
    qualified = f"{module}.{name}"
    if inspect.ismodule(obj):  # the top-level package's submodules form one tight list
        return f"* :mod:`{obj.__name__}`" + ("" if module == "pneumoxai" else "\n")
    if inspect.isclass(obj):
        lines = [f".. autoclass:: {qualified}", "   :members:"]
    elif callable(obj):
        lines = [f".. autofunction:: {qualified}"]
    else:
        lines = [f".. autodata:: {qualified}", "   :annotation:"]
        if isinstance(obj, (str, int, float, tuple, frozenset)) and len(repr(obj)) <= 100:
            lines[-1] += f" = {obj!r}"
    home = module if isinstance(obj, (str, int, float)) else _home(obj)  # equal scalars may be one object
    if home is not None and home != module:
        lines.append("   :no-index:")
    return "\n".join(lines) + "\n"


def api_page(module):
    """The reST text of one module's API page: its docstring, then every name of its ``__all__``."""
    mod = importlib.import_module(module)
    title = f"``{module}``"
    head = [title, "=" * len(title), "", f".. automodule:: {module}", "   :no-members:", ""]
    names = [n for n in mod.__all__ if n != "__version__"]
    body = [_directive(module, name, getattr(mod, name)) for name in names] + [""]
    if module == "pneumoxai":
        head.append(f"Version: ``{pneumoxai.__version__}``. Submodules (imported on first use):\n")
    return "\n".join(head) + "\n" + "\n".join(body)


API_INDEX = """API reference
=============

Every public name of pneumoxai, one page per module, from the numpydoc docstrings (parameters with
shapes, a doctest each). Modules and names that start with ``_`` are private; what is not listed here
may change without notice.

.. toctree::
   :maxdepth: 1

{toctree}
"""


def write_api_pages(folder=DOCS / "api"):
    """Write ``api/<module>.rst`` for every public module (only when the text changed, so rebuilds stay cheap)."""
    folder.mkdir(exist_ok=True)
    toctree = "\n".join(f"   {module}" for module in PUBLIC_MODULES)
    pages = {"index": API_INDEX.format(toctree=toctree), **{m: api_page(m) for m in PUBLIC_MODULES}}
    for stem, text in pages.items():
        path = folder / f"{stem}.rst"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)



def _skip_foreign_member(app, what, name, obj, skip, options):
    """Leave out members a class inherits from scikit-learn (e.g. the metadata-routing ``set_*_request``)."""
    module = getattr(obj, "__module__", None) or ""
    if what == "class" and module and not module.startswith("pneumoxai"):
        return True
    return None


def setup(app):
    app.connect("builder-inited", lambda app: write_api_pages())  # before Sphinx looks for source files
    app.connect("autodoc-skip-member", _skip_foreign_member)
