"""Methods between weak models and students: ensembles, filters, probes, rounds.

Each method is a pure transform that derives a weak-label store (``[N, C]``
probabilities) or per-example weights (``[N]`` in [0, 1]) from stores and
the strong model's features, so every loss and noise setting composes with
every method without new code in the losses or the engines.

Layout. ``ensemble`` (combine K weak models by mean or product of experts;
bootstrap resamples for bagging), ``filters`` (weights from members'
disagreement or the ensemble's entropy; a top-fraction keep rule), ``probe``
(kNN and logistic probes on strong features, relabel and filter, after
EleutherAI/w2s), ``iterated`` (a model's logits -> the next round's labels,
for bootstrapping and strong-to-strong). This module only re-exports.
"""

from w2sg_jax.methods.ensemble import COMBINERS
from w2sg_jax.methods.ensemble import bootstrap_indices
from w2sg_jax.methods.ensemble import combine
from w2sg_jax.methods.filters import agreement_weights
from w2sg_jax.methods.filters import confidence
from w2sg_jax.methods.filters import entropy_weights
from w2sg_jax.methods.filters import normalized_entropy
from w2sg_jax.methods.filters import top_fraction_weights
from w2sg_jax.methods.filters import vote_agreement
from w2sg_jax.methods.iterated import label_change_fraction
from w2sg_jax.methods.iterated import student_store_probs
from w2sg_jax.methods.probe import disagreement
from w2sg_jax.methods.probe import filter_by_disagreement
from w2sg_jax.methods.probe import knn_probe
from w2sg_jax.methods.probe import logistic_probe
from w2sg_jax.methods.probe import relabel

__all__ = [
    "COMBINERS",
    "agreement_weights",
    "bootstrap_indices",
    "combine",
    "confidence",
    "disagreement",
    "entropy_weights",
    "filter_by_disagreement",
    "knn_probe",
    "label_change_fraction",
    "logistic_probe",
    "normalized_entropy",
    "relabel",
    "student_store_probs",
    "top_fraction_weights",
    "vote_agreement",
]
