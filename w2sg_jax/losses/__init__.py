r"""Losses for weak-to-strong training: f-divergences, baselines, a registry.

Every loss maps student logits ``[..., C]`` and weak label probabilities
``[..., C]`` (C >= 2) to unreduced per-example values ``[...]``; the caller
reduces.

Direction. With P = the weak label distribution and Q = softmax(student
logits), every f-divergence here is

.. math::
  D_f(P \| Q) = \sum_c Q(c) \, f\!\left(\frac{P(c)}{Q(c)}\right),

so ``kl`` (f = t log t) is KL(weak || student), the cross-entropy minus the
weak entropy, and ``reverse_kl`` (f = -log t) is KL(student || weak).

Use through the registry::

  loss_fn = losses.get("js", confidence=0.5, warmup=0.2)
  per_example_B = loss_fn(logits_BxC, weak_probs_BxC, where=valid_B,
                          progress=step / total_steps)
  loss = per_example_B.sum() / valid_B.sum()

Every loss function has the signature
``loss_fn(student_logits, weak_probs, *, where=None, progress=None)``:

* ``where`` (bool ``[...]``, optional): valid examples. Masked examples return
  exactly 0 (with zero gradient, even if their inputs are NaN), take no part
  in any batch statistic (the confidence term's quantile) and are not
  checked.
* ``progress`` (scalar in [0, 1], may be traced): training progress; only the
  confidence term reads it. ``None`` means fully warmed up.

Layout. ``f_divergences`` (kl, reverse_kl, js, hellinger, pearson, neyman,
tv, jeffreys, alpha, and ``f_divergence(f)`` for a custom generator),
``baselines`` (xent, logconf, reverse_xent, product), ``confidence`` (the
Burns et al. confidence term as a target transform), ``pairwise``
(margin_to_logits, preference_probs), ``_common`` (input preparation, the
epsilon convention, input checks), ``registry`` (get, names, resolve,
register). This module only re-exports their public names.

Registry. ``get(name, **hparams)`` binds keyword hparams (``eps``, ``alpha``)
and composes the confidence term with any registered loss: ``confidence``,
``warmup`` and ``confidence_schedule`` are accepted for every name. Every
name ``<loss>`` that does not bind a confidence itself also has a
``<loss>+conf`` twin (``js+conf``, ``kl+conf``, ...; listed by ``names()``),
the loss with the confidence term at the defaults of the Burns et al. release:
``confidence=0.5, warmup=0.1, confidence_schedule="burns"``, each
overridable by keyword. These names exist whatever was imported: nothing
registers a loss as a side effect of importing a task.

Input checks. A loss returned by ``get`` (``check=True``, the default)
checks its inputs whenever ``weak_probs`` (and ``where``) are concrete
arrays: every valid row must be non-negative and sum to 1 within 1e-2, and
the class counts must agree, with C >= 2. A ValueError names the first bad
row, its values and the fix. Under ``jit``/``vmap`` the inputs are tracers
and the check is skipped (it costs nothing in a compiled step). Shape errors
are raised in every case.

Numerics. Inputs may be bf16; everything is computed in float32 (float64
inputs stay float64), in log space, so values and gradients with respect to
the logits stay finite for logits up to 1e4 in magnitude and for weak
probabilities that are exactly 0 or 1. Gradients are taken with respect to
the logits only. Losses that are infinite when a probability is 0 take
``eps`` (default 1e-7) and clip-and-renormalise (``losses._common``).

References:
  Burns et al., "Weak-to-Strong Generalization: Eliciting Strong Capabilities
  With Weak Supervision", 2023, arXiv:2312.09390.
  Yao et al., "On Weak-to-Strong Generalization and f-Divergence", 2025,
  arXiv:2506.03109.
  Liese and Vajda, "On Divergences and Informations in Statistics and
  Information Theory", IEEE Trans. Inf. Theory, 2006.
"""

from __future__ import annotations

from w2sg_jax.losses._common import DEFAULT_EPS, LossFn, check_inputs
from w2sg_jax.losses.baselines import logconf, product, reverse_xent, xent
from w2sg_jax.losses.confidence import (BURNS_RELEASE, DEFAULT_WARMUP,
                                        LOGCONF_CONFIDENCE, SCHEDULES,
                                        confidence_target, confidence_weight,
                                        hard_student_labels, with_confidence)
from w2sg_jax.losses.f_divergences import (GENERATORS, alpha_divergence,
                                           alpha_generator, f_divergence,
                                           hellinger, jeffreys, js, kl, neyman,
                                           pearson, reverse_kl, tv,
                                           validate_generator)
from w2sg_jax.losses.pairwise import margin_to_logits, preference_probs
from w2sg_jax.losses.registry import (BASELINES, CONF_SUFFIX,
                                      CONFIDENCE_HPARAMS, F_DIVERGENCES, get,
                                      names, register, resolve)

__all__ = [
    "BASELINES",
    "BURNS_RELEASE",
    "CONFIDENCE_HPARAMS",
    "CONF_SUFFIX",
    "DEFAULT_EPS",
    "DEFAULT_WARMUP",
    "F_DIVERGENCES",
    "GENERATORS",
    "LOGCONF_CONFIDENCE",
    "LossFn",
    "SCHEDULES",
    "alpha_divergence",
    "alpha_generator",
    "check_inputs",
    "confidence_target",
    "confidence_weight",
    "f_divergence",
    "get",
    "hard_student_labels",
    "hellinger",
    "jeffreys",
    "js",
    "kl",
    "logconf",
    "margin_to_logits",
    "names",
    "neyman",
    "pearson",
    "preference_probs",
    "product",
    "register",
    "resolve",
    "reverse_kl",
    "reverse_xent",
    "tv",
    "validate_generator",
    "with_confidence",
    "xent",
]
