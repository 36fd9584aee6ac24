"""theory.md and the figures: one renderer per section, and the assembler.

Each section module (`misfit_gain`, `sample_complexity`, `equivalence`,
`noise_dose`, `trajectory`) has ``markdown(config, fitted, sections)``, the
lines of its part of theory.md (a table and a finding that says agree or
disagree), and ``figures(sections, fitted, outdir, title)``, which draws its
PNGs. `findings_markdown` and `figures` put them together, in this order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from w2sg_jax.theory.render import equivalence, misfit_gain, noise_dose, sample_complexity, trajectory
from w2sg_jax.theory.render.common import fmt

__all__ = ["SECTIONS", "figures", "findings_markdown"]

SECTIONS = (misfit_gain, sample_complexity, equivalence, noise_dose, trajectory)


def findings_markdown(config, fitted: Mapping[str, Any], sections: Mapping[str, Any],
                      timings: Mapping[str, float]) -> str:
  """theory.md: the fitted constants, then one paragraph per finding, each saying agree / disagree."""
  weak_acc, ceil_acc = fitted["weak_test_accuracy"], fitted["ceiling_test_accuracy"]
  lines = [f"# {config.name}: the theory of Yao et al. (2025), measured", ""]
  lines += [
      f"Task `{config.task}`: weak model test accuracy {fmt(weak_acc)}, strong ceiling {fmt(ceil_acc)}; "
      f"{int(config.seeds)} seeds per cell. The numbers come from `theory.json` beside this file, and so do the "
      "figures. Misfit = mean over test examples of D_f(weak || student); gain_own = R_f(weak, truth) - "
      "R_f(student, truth), with the one-hot truth and the library's eps convention. A finding against the "
      "theory is a result, not a bug.", ""]
  for section in SECTIONS:
    lines += section.markdown(config, fitted, sections)
  lines += ["## Run", "", "| part | seconds |", "|---|---|"]
  lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
  return "\n".join(lines) + "\n"


def figures(sections: Mapping[str, Any], fitted: Mapping[str, Any], outdir: str, title: str) -> list[str]:
  """Every section's figures in ``outdir``, in section order; their paths."""
  return [path for section in SECTIONS for path in section.figures(sections, fitted, outdir, title)]
