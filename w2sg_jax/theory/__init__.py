r"""The theory of Yao et al. (2025), measured: a lab on the fixed-representation regime.

The paper's statements (arXiv:2506.03109) are about a student
:math:`G_{sw} = g \circ h_s` whose strong representation :math:`h_s` is frozen
and whose head g is trained on the weak model's labels :math:`G_w` with an
f-divergence. The offline default (MiniLM features + a linear head) is that
regime, so its cached features, weak model and label stores are reused here.
All risks are means over the test split, with the library's direction and eps
convention (`w2sg_jax.losses`):

.. math::

  \mathrm{misfit}_f = R_f(G_{sw}, G_w) = \mathbb{E}_x\, D_f(G_w(x) \,\|\, G_{sw}(x)),
  \qquad
  \mathrm{gain}_f = R_f(G_w, G^*) - R_f(G_{sw}, G^*),

with :math:`G^*` the one-hot ground truth and the weak model's probabilities
entering as logits :math:`\log \max(q, 10^{-12})`. ``xent`` and ``logconf``
use KL as their own f; a ``<loss>+conf`` name uses its base f.

What the lab tests (`run` writes ``theory.json``, ``theory.md`` and figures):

* ``misfit_gain`` -- the limitation :math:`|\mathrm{gain}_f| \le C
  \sqrt{\mathrm{misfit}_f}`; the fitted C is the smallest constant of the
  envelope over every run of a loss (`fit_envelope`). It also counts the runs
  where gain >= misfit, the convex-class inequality of Charikar et al.
  (2024, arXiv:2405.15116).
* ``sample_complexity`` -- accuracy against the number n of weakly labelled
  examples (nested random subsets of w2s_train). Every n trains for the same
  number of steps as the full-data students, so all n of a loss share one
  vmapped program; the excess error over the ceiling is fitted as a power of
  n (`fit_loglog_slope`) and as :math:`e_\infty + A n^{-b}` (`fit_power_law`).
* ``equivalence`` -- how often two students of the same seed but different f
  predict differently (`disagreement_matrix`), against how often two seeds
  of the same f do.
* ``noise_dose`` -- accuracy against the noise rate for label flips and for
  shrinking toward uniform, bounded f (tv, js, hellinger) against unbounded
  (kl, pearson, neyman).
* ``trajectory`` -- test accuracy and the training misfit at every chunk
  boundary of a long run, evaluated inside the compiled training loop
  (`engines.train_vmap`'s ``on_chunk``), so over-fitting to the weak labels
  shows without retraining.

Every lab group (one loss, one section) is a cache entry keyed by what
produced it, like every stage artifact, so a rerun only draws the figures.

Layout. `measures` (own_divergence, misfit, risk, gain_own, disagreement,
mean_ci), `fitting` (the fits and their summaries), `lab` (the runner `run`,
the cached groups of head runs and each section's computation) and `render`
(one module per section, each writing its part of theory.md and its figures,
and the assembler). This module only re-exports their public names.
"""

from __future__ import annotations

from w2sg_jax.theory.fitting import fit_envelope, fit_loglog_slope, fit_power_law, fits
from w2sg_jax.theory.lab import (FORMAT_VERSION, Lab, LabRun, equivalence_section, fixed_step_sections,
                                 misfit_gain_section, run, stack_prefixes, trajectory_section)
from w2sg_jax.theory.measures import (BOUNDED, EPS_DOMINATED, PROB_FLOOR, UNBOUNDED, disagreement_matrix,
                                      divergences, gain_own, mean_ci, misfit, own_divergence, probs_to_logits,
                                      risk, seed_disagreement)
from w2sg_jax.theory.render import figures, findings_markdown

__all__ = [
    "BOUNDED",
    "UNBOUNDED",
    "disagreement_matrix",
    "divergences",
    "fit_envelope",
    "fit_loglog_slope",
    "fit_power_law",
    "gain_own",
    "mean_ci",
    "misfit",
    "own_divergence",
    "probs_to_logits",
    "risk",
    "run",
    "seed_disagreement",
    "stack_prefixes",
]
