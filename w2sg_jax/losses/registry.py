"""The loss registry: ``get``, ``names``, ``resolve``, ``register``, and the built-in names.

``get(name, **hparams)`` binds keyword hparams (``eps``, ``alpha``) and
composes the confidence term with any registered loss: ``confidence``,
``warmup`` and ``confidence_schedule`` are accepted for every name. Every name
``<loss>`` that does not bind a confidence itself also has a ``<loss>+conf``
twin (``js+conf``, ``kl+conf``, ...; listed by ``names()``), the loss with the
confidence term at the defaults of the Burns et al. release. The built-in
losses are registered below, when this module is imported (always, through
``w2sg_jax.losses``): nothing registers a loss as a side effect of importing a
task. See the package docstring (``w2sg_jax.losses``) for the loss contract.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional

from w2sg_jax.losses import _common
from w2sg_jax.losses import confidence as confidence_lib
from w2sg_jax.losses._common import LossFn
from w2sg_jax.losses.baselines import logconf, product, reverse_xent, xent
from w2sg_jax.losses.confidence import (BURNS_RELEASE, DEFAULT_WARMUP,
                                        LOGCONF_CONFIDENCE, with_confidence)
from w2sg_jax.losses.f_divergences import (alpha_divergence, check_alpha,
                                           hellinger, jeffreys, js, kl, neyman,
                                           pearson, reverse_kl, tv)

__all__ = [
    "BASELINES",
    "CONFIDENCE_HPARAMS",
    "CONF_SUFFIX",
    "F_DIVERGENCES",
    "get",
    "names",
    "register",
    "resolve",
]

F_DIVERGENCES = ("kl", "reverse_kl", "js", "hellinger", "pearson", "neyman",
                 "tv", "jeffreys", "alpha")
BASELINES = ("xent", "logconf", "reverse_xent", "product")
# "<loss>+conf" is <loss> with the confidence term at BURNS_RELEASE.
CONF_SUFFIX = "+conf"
# The confidence term's hparams, accepted by every loss (handled by get).
CONFIDENCE_HPARAMS = confidence_lib.HPARAMS

# Keyword arguments that are not hparams: the call arguments of a loss.
_CALL_ARGS = ("where", "progress")


def _check_number(key: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(
        f"hparam {key}={value!r} must be a Python number (hparams are fixed "
        "for a run; pass training progress as progress=).")


def _builtin_factory(fn: LossFn) -> Callable[..., LossFn]:
  """Factory that binds the keyword hparams of a built-in loss, checked early.

  The confidence hparams are left to the registry (``get``), which composes
  the confidence term with the bound loss.
  """
  params = inspect.signature(fn).parameters
  hparams = tuple(n for n, p in params.items()
                  if p.kind is p.KEYWORD_ONLY
                  and n not in _CALL_ARGS + confidence_lib.HPARAMS)

  def factory(**kwargs):
    bound = {n: params[n].default for n in hparams}
    bound.update(kwargs)
    for key, value in kwargs.items():
      _check_number(key, value)
    if "eps" in bound:
      _common.check_eps(bound["eps"])
    if "alpha" in bound and bound["alpha"] not in (0, 1):
      check_alpha(bound["alpha"], bound["eps"])

    def loss_fn(student_logits, weak_probs, *, where=None, progress=None):
      # confidence=0.0: the registry applies the term as a target transform.
      return fn(student_logits, weak_probs, where=where, progress=progress,
                confidence=0.0, **bound)

    loss_fn.__name__ = fn.__name__
    loss_fn.__doc__ = fn.__doc__
    loss_fn.hparams = dict(bound)
    return loss_fn

  factory.__signature__ = inspect.Signature([
      inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY,
                        default=params[n].default) for n in hparams])
  return factory


_REGISTRY: dict[str, Callable[..., LossFn]] = {}
# Hparams a registered name binds before the caller's (logconf: confidence).
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register(name: str, fn_factory: Callable[..., LossFn], *,
             overwrite: bool = False,
             defaults: Optional[Mapping[str, Any]] = None) -> None:
  """Adds a loss to the registry.

  The registry composes the confidence term with every loss, so a registered
  ``name`` also accepts ``confidence``, ``warmup`` and
  ``confidence_schedule``, and ``name + "+conf"`` is available at once
  (unless ``defaults`` binds a confidence).

  Args:
    name: the name ``get`` will accept; must not end in ``"+conf"``.
    fn_factory: ``fn_factory(**hparams) -> loss_fn`` where ``loss_fn`` follows
      the package contract ``(student_logits [..., C], weak_probs [..., C],
      *, where=None, progress=None) -> [...]``. Its keyword parameters are the
      loss's hparams; a factory with ``**kwargs`` accepts anything. It never
      receives the confidence hparams.
    overwrite: replace an existing entry instead of raising.
    defaults: hparams bound before the caller's, e.g. ``{"confidence":
      0.75}`` for ``logconf``.

  Raises:
    ValueError: if ``name`` is taken (and ``overwrite`` is False), ends in
      ``"+conf"``, or the factory is not callable.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"Loss name must be a non-empty string; got {name!r}.")
  if name.endswith(CONF_SUFFIX):
    raise ValueError(
        f"Loss name {name!r} ends in {CONF_SUFFIX!r}, which the registry "
        f"reserves: register {name[:-len(CONF_SUFFIX)]!r} and "
        f"{name!r} exists by itself.")
  if not callable(fn_factory):
    raise ValueError(
        f"fn_factory for {name!r} must be callable (**hparams -> loss_fn); "
        f"got {fn_factory!r}.")
  if name in _REGISTRY and not overwrite:
    raise ValueError(
        f"Loss {name!r} is already registered; pick another name or pass "
        "overwrite=True.")
  _REGISTRY[name] = fn_factory
  _DEFAULTS[name] = dict(defaults or {})


def _has_conf_twin(name: str) -> bool:
  return "confidence" not in _DEFAULTS.get(name, {})


def names() -> list[str]:
  """Sorted list of every name ``get`` accepts, ``<loss>+conf`` included."""
  twins = [n + CONF_SUFFIX for n in _REGISTRY if _has_conf_twin(n)]
  return sorted(list(_REGISTRY) + twins)


def resolve(name: str) -> tuple[str, dict[str, Any]]:
  """A name of ``names()`` -> (its registered loss, the hparams it binds).

  ``resolve("js+conf") == ("js", {"confidence": 0.5, "warmup": 0.1,
  "confidence_schedule": "burns"})``; ``resolve("js") == ("js", {})``;
  ``resolve("logconf")`` gives ``logconf`` with its confidence 0.75 and
  warmup 0.2. ``get(name, **hp)`` is the registered loss with these hparams,
  then ``hp``, bound.

  Raises:
    ValueError: unknown name, listing the known ones.
  """
  if isinstance(name, str) and name in _REGISTRY:
    return name, dict(_DEFAULTS.get(name, {}))
  if isinstance(name, str) and name.endswith(CONF_SUFFIX):
    base = name[:-len(CONF_SUFFIX)]
    if base in _REGISTRY and _has_conf_twin(base):
      return base, {**_DEFAULTS.get(base, {}), **BURNS_RELEASE}
  raise ValueError(
      f"Unknown loss {name!r}. Known losses: {', '.join(names())}. "
      "Add your own with losses.register(name, factory).")


def get(name: str, *, check: bool = True, **hparams: Any) -> LossFn:
  """Returns the registered loss ``name`` with ``hparams`` bound.

  Args:
    name: one of ``names()``, e.g. ``"js"`` or ``"js+conf"``.
    check: check the inputs on every eager call (``weak_probs`` non-negative,
      summing to 1 within 1e-2, class counts equal, C >= 2); skipped by
      itself when the inputs are traced (``jit``, ``vmap``).
    **hparams: keyword hyperparameters of that loss, e.g. ``alpha`` for
      ``alpha``, ``eps``; and, for every loss, the confidence term's
      ``confidence`` (default 0, off), ``warmup`` (default 0.2) and
      ``confidence_schedule`` (``"linear"``, the default, or ``"burns"``).
      ``<loss>+conf`` names default to ``confidence=0.5, warmup=0.1,
      confidence_schedule="burns"``; ``logconf`` to ``confidence=0.75``.

  Returns:
    ``loss_fn(student_logits [..., C], weak_probs [..., C], *, where=None,
    progress=None) -> [...]``, unreduced, float32; ``loss_fn.hparams`` holds
    every bound hparam.

  Raises:
    ValueError: unknown name (listing the known ones), unknown hparam (naming
      it and the accepted ones), or an out-of-range value.
  """
  base, _ = resolve(name)
  try:  # One object per (name, check, hparams, factory): jit caches compiled programs on it.
    key = (name, bool(check), tuple(sorted(hparams.items())), id(_REGISTRY[base]))
    hash(key)
  except TypeError:  # An unhashable hparam value: build afresh.
    return _build(name, check=check, **hparams)
  if key not in _BUILT:
    _BUILT[key] = _build(name, check=check, **hparams)
  return _BUILT[key]


_BUILT: dict[tuple[Any, ...], LossFn] = {}


def _build(name: str, *, check: bool = True, **hparams: Any) -> LossFn:
  """`get` without the memo."""
  base, defaults = resolve(name)
  factory = _REGISTRY[base]
  params = inspect.signature(factory).parameters
  takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
  if not takes_any:
    accepted = [n for n, p in params.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    accepted += [n for n in confidence_lib.HPARAMS if n not in accepted]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
      raise ValueError(
          f"Unknown hparam(s) {', '.join(map(repr, unknown))} for loss "
          f"{name!r}. It accepts: {', '.join(accepted)}.")
  bound = {**defaults, **hparams}
  conf = {"confidence": 0.0, "warmup": DEFAULT_WARMUP,
          "confidence_schedule": "linear"}
  for hp_name in confidence_lib.HPARAMS:
    if hp_name in bound:
      conf[hp_name] = bound.pop(hp_name)
  _check_number("confidence", conf["confidence"])
  _check_number("warmup", conf["warmup"])
  confidence_lib.check_hparams(conf["confidence"], conf["warmup"],
                               conf["confidence_schedule"])
  base_fn = factory(**bound)
  loss_fn = with_confidence(base_fn, confidence=conf["confidence"],
                            warmup=conf["warmup"],
                            schedule=conf["confidence_schedule"])
  if check:
    loss_fn = _common.with_input_check(loss_fn, name)
  else:
    loss_fn = _plain(loss_fn)
  loss_fn.__name__ = name
  loss_fn.__doc__ = getattr(base_fn, "__doc__", None)
  loss_fn.hparams = {**getattr(base_fn, "hparams", bound), **conf}
  return loss_fn


def _plain(loss_fn: LossFn) -> LossFn:
  """A fresh function object, so that setting attributes leaves loss_fn be."""

  def unchecked(student_logits, weak_probs, *, where=None, progress=None):
    return loss_fn(student_logits, weak_probs, where=where, progress=progress)

  return unchecked


for _name, _fn in (
    ("kl", kl),
    ("reverse_kl", reverse_kl),
    ("js", js),
    ("hellinger", hellinger),
    ("pearson", pearson),
    ("neyman", neyman),
    ("tv", tv),
    ("jeffreys", jeffreys),
    ("alpha", alpha_divergence),
    ("xent", xent),
    ("reverse_xent", reverse_xent),
    ("product", product),
):
  register(_name, _builtin_factory(_fn))
# logconf is xent with the confidence term bound (linear schedule by default);
# as with every loss, the registry applies the term.
register("logconf", _builtin_factory(logconf),
         defaults={"confidence": LOGCONF_CONFIDENCE,
                   "warmup": DEFAULT_WARMUP})
del _name, _fn
