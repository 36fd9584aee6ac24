"""The shipped experiments: one module per experiment, ``get_config(variant)`` and ``VARIANTS``.

``w2sg run NAME[:variant]`` runs one (``w2sg list`` shows them). The first line
of each module's docstring is its one-line description. The repository's
top-level ``experiments/`` holds thin files that re-export these, so
``--config=experiments/NAME.py`` keeps working in a clone; put your own
experiment files there (or anywhere) and run them by path.
"""

import os

FOLDER = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  """The packaged experiments' names, sorted."""
  return sorted(f[:-3] for f in os.listdir(FOLDER) if f.endswith(".py") and not f.startswith("_"))


def path(name: str) -> str:
  """The file of packaged experiment ``name`` (it may not exist)."""
  return os.path.join(FOLDER, f"{name}.py")
