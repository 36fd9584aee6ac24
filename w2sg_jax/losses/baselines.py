r"""Baseline losses of the weak-to-strong literature.

P = the weak label distribution, Q = softmax(student logits):

* ``xent``: cross-entropy -sum P log Q (Burns et al.'s standard baseline);
* ``logconf``: ``xent`` with the confidence term at ``confidence=0.75``
  (Burns et al.'s auxiliary confidence loss; ``losses.confidence``);
* ``reverse_xent``: -sum Q log P~, the student's expected weak NLL;
* ``product``: -log sum P Q, the agreement ("product-of-experts") loss.

References:
  Burns et al., "Weak-to-Strong Generalization: Eliciting Strong Capabilities
  With Weak Supervision", 2023, arXiv:2312.09390.
  Yao et al., "On Weak-to-Strong Generalization and f-Divergence", 2025,
  arXiv:2506.03109.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from w2sg_jax.losses import _common
from w2sg_jax.losses._common import DEFAULT_EPS, clipped_log_probs, safe_log
from w2sg_jax.losses.confidence import (DEFAULT_WARMUP, LOGCONF_CONFIDENCE,
                                        run_loss)

__all__ = ["logconf", "product", "reverse_xent", "xent"]


# ---------------------------------------------------------------------------
# Cores: (log_q [..., C], p [..., C]) -> [...], inputs already float32
# ---------------------------------------------------------------------------


def _xent_core(log_q, p):
  return 0.0 - jnp.sum(p * log_q, axis=-1)  # 0.0 - x: no -0.0 in outputs


def _reverse_xent_core(log_q, p, eps):
  log_p = clipped_log_probs(safe_log(p), eps)
  return 0.0 - jnp.sum(jnp.exp(log_q) * log_p, axis=-1)


def _product_core(log_q, p):
  return 0.0 - jax.nn.logsumexp(safe_log(p) + log_q, axis=-1)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


@_common.doc
def xent(student_logits, weak_probs, *, where=None, progress=None,
         confidence=0.0, warmup=DEFAULT_WARMUP,
         confidence_schedule="linear"):
  r"""Cross-entropy with soft weak targets (the standard W2SG baseline).

  .. math::
    L(P, Q) = -\sum_c P(c) \log Q(c) = \mathrm{KL}(P \| Q) + H(P)

  P = weak, Q = softmax(student_logits).

{common_args}

  Returns:
    ``[...]`` per-example cross-entropy in nats, float32.

  References:
    Burns et al., 2023, arXiv:2312.09390.
  """
  return run_loss(_xent_core, student_logits, weak_probs, where,
                  progress, confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


@_common.doc
def logconf(student_logits, weak_probs, *, where=None, progress=None,
            confidence=LOGCONF_CONFIDENCE, warmup=DEFAULT_WARMUP,
            confidence_schedule="linear"):
  r"""Auxiliary-confidence loss of Burns et al.: xent to a mixed target.

  .. math::
    L = -\sum_c P_a(c) \log Q(c), \quad
    P_a = (1 - a) P + a\, \mathrm{sg}[\mathrm{hard}(Q)], \quad
    a = \mathrm{confidence} \cdot \min(1, \mathrm{progress}/\mathrm{warmup}).

  P = weak, Q = softmax(student_logits). For C = 2, hard(Q) thresholds the
  class-0 probability at the batch quantile matching the weak class-0 prior
  (``hard_student_labels``), so per-example values depend on the batch (all
  leading axes, valid examples only). Unlike the reference implementation,
  ``a`` ramps linearly by default and never jumps; pass
  ``confidence_schedule="burns"`` for the release's schedule (ramp to
  ``confidence * warmup``, then a jump to ``confidence``), or use
  ``xent+conf`` for its defaults too (confidence 0.5, warmup 0.1). At
  progress = 0 this is ``xent``.

{common_args}

  Returns:
    ``[...]`` per-example loss, float32.

  References:
    Burns et al., 2023, arXiv:2312.09390 (``logconf_loss_fn``).
  """
  return run_loss(_xent_core, student_logits, weak_probs, where,
                  progress, confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


@_common.doc
def reverse_xent(student_logits, weak_probs, *, where=None, progress=None,
                 eps=DEFAULT_EPS, confidence=0.0, warmup=DEFAULT_WARMUP,
                 confidence_schedule="linear"):
  r"""Reverse cross-entropy -sum_c Q log P: the student's expected weak NLL.

  .. math::
    L(P, Q) = -\sum_c Q(c) \log \tilde P(c) = \mathrm{KL}(Q \| \tilde P) + H(Q)

  P = weak, Q = softmax(student_logits), P~ = max(P, eps), renormalised
  (module docstring).

{common_args}
    eps: clip for the weak probabilities.

  Returns:
    ``[...]`` per-example reverse cross-entropy, float32.

  References:
    Yao et al., 2025, arXiv:2506.03109.
  """
  core = functools.partial(_reverse_xent_core, eps=eps)
  return run_loss(core, student_logits, weak_probs, where, progress,
                  confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)


@_common.doc
def product(student_logits, weak_probs, *, where=None, progress=None,
            confidence=0.0, warmup=DEFAULT_WARMUP,
            confidence_schedule="linear"):
  r"""Agreement ("product") loss: minus the log-probability of agreeing.

  .. math::
    L(P, Q) = -\log \sum_c P(c) Q(c)

  P = weak, Q = softmax(student_logits): the negative log-likelihood that
  independent draws from the weak labels and the student agree. Computed as
  -logsumexp(log P + log Q); finite whenever P has mass somewhere.

{common_args}

  Returns:
    ``[...]`` per-example loss, float32.

  References:
    Burns et al., 2023, arXiv:2312.09390 (product-of-experts baseline).
  """
  return run_loss(_product_core, student_logits, weak_probs, where,
                  progress, confidence=confidence, warmup=warmup,
                  schedule=confidence_schedule)
