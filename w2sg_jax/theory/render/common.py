"""What every section's renderer shares: number formats and figure helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["code_list", "colours", "fmt", "fmt_g", "save"]


def fmt(x: float, d: int = 3) -> str:
  """``d`` decimals; "n/a" for None and non-finite values."""
  return "n/a" if x is None or not np.isfinite(x) else f"{x:.{d}f}"


def fmt_g(x: float) -> str:
  """Compact: 3 significant digits, scientific when large."""
  return "n/a" if x is None or not np.isfinite(x) else (f"{x:.2e}" if abs(x) >= 1e4 else f"{x:.3g}")


def code_list(xs) -> str:
  """``a``, ``b``: names as inline code, comma-separated."""
  return ", ".join(f"`{x}`" for x in xs)


def colours(names: Sequence[str]) -> dict[str, Any]:
  from matplotlib import colormaps

  cmap = colormaps["tab20" if len(names) > 10 else "tab10"]
  return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def save(fig, path: str) -> str:
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path
