"""The registry: names, hparams, errors, custom losses, ``<loss>+conf``."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from tests.losses import _reference as ref
from w2sg_jax import losses
from w2sg_jax.losses import registry

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def test_registry_names_and_errors():
  expected = {"kl", "reverse_kl", "js", "hellinger", "pearson", "neyman", "tv",
              "jeffreys", "alpha", "xent", "logconf", "product", "reverse_xent"}
  assert expected <= set(losses.names())
  assert set(losses.F_DIVERGENCES) | set(losses.BASELINES) == expected
  assert losses.names() == sorted(losses.names())
  with pytest.raises(ValueError) as e:
    losses.get("kl_div")
  for name in expected:
    assert name in str(e.value)
  with pytest.raises(ValueError, match="'alpha'.*accepts: .*confidence"):
    losses.get("kl", alpha=0.5)
  with pytest.raises(ValueError, match="'epsilon'"):
    losses.get("reverse_kl", epsilon=1e-6)
  with pytest.raises(ValueError, match="overflows float32"):
    losses.get("alpha", alpha=20.0)
  with pytest.raises(ValueError, match="confidence must be in"):
    losses.get("js", confidence=1.5)
  with pytest.raises(ValueError, match="confidence must be in"):
    losses.get("js+conf", confidence=-0.1)
  with pytest.raises(ValueError, match="warmup must be"):
    losses.get("js+conf", warmup=2.0)
  with pytest.raises(ValueError, match="eps must be"):
    losses.get("pearson", eps=0.0)
  with pytest.raises(ValueError, match="Python number"):
    losses.get("js", confidence=jnp.asarray(0.5))
  with pytest.raises(ValueError, match="same shape"):
    losses.get("kl")(jnp.zeros((3, 2)), jnp.zeros((4, 2)))


def test_conf_names_are_listed_with_their_defaults():
  names = losses.names()
  for base in set(losses.F_DIVERGENCES) | {"xent", "reverse_xent", "product"}:
    assert f"{base}+conf" in names
  # logconf already binds a confidence: no logconf+conf, and no +conf+conf.
  assert "logconf+conf" not in names
  for bad in ("logconf+conf", "js+conf+conf", "+conf", "nope+conf"):
    with pytest.raises(ValueError, match="Unknown loss"):
      losses.get(bad)
  assert losses.get("js+conf").hparams == {
      "confidence": 0.5, "warmup": 0.1, "confidence_schedule": "burns"}
  assert losses.get("js+conf", confidence=0.75).hparams["confidence"] == 0.75
  assert losses.get("js+conf", confidence=0.75).hparams["warmup"] == 0.1
  assert losses.get(
      "js+conf", confidence_schedule="linear").hparams["confidence_schedule"] \
      == "linear"
  assert losses.get("alpha+conf", alpha=2.0).hparams == {
      "alpha": 2.0, "eps": ref.EPS, "confidence": 0.5, "warmup": 0.1,
      "confidence_schedule": "burns"}
  # Plain confidence= defaults to the linear schedule; logconf to 0.75.
  assert losses.get("js", confidence=0.5).hparams == {
      "confidence": 0.5, "warmup": 0.2, "confidence_schedule": "linear"}
  assert losses.get("logconf").hparams == {
      "confidence": 0.75, "warmup": 0.2, "confidence_schedule": "linear"}
  assert losses.get("js+conf").__name__ == "js+conf"


@pytest.mark.slow
def test_conf_names_exist_without_importing_any_task():
  code = textwrap.dedent("""
      import sys
      import numpy as np
      from w2sg_jax import losses
      assert not any(m.startswith("w2sg_jax.tasks") for m in sys.modules)
      names = losses.names()
      assert "js+conf" in names and "kl+conf" in names, names
      logits = np.array([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]], np.float32)
      weak = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]], np.float32)
      got = losses.get("js+conf")(logits, weak, progress=0.5)
      want = losses.get("js", confidence=0.5, warmup=0.1,
                        confidence_schedule="burns")(logits, weak,
                                                     progress=0.5)
      np.testing.assert_allclose(got, want, rtol=1e-6)
      import w2sg_jax.tasks.preference  # noqa: F401
      assert losses.names() == names, "importing a task changed the registry"
      print("OK")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=_REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr


def test_register_custom_loss():
  name = "test_sq"
  with pytest.raises(ValueError, match="not convex"):
    losses.f_divergence(lambda t: 0.5 * jnp.log(t) ** 2)
  factory = lambda **hp: losses.f_divergence(lambda t: (t - 1.0) ** 2,
                                             name=name, **hp)
  losses.register(name, factory, overwrite=True)
  try:
    assert name in losses.names() and name + "+conf" in losses.names()
    logits, p = ref.inputs("random", 10)
    np.testing.assert_allclose(losses.get(name)(logits, p),
                               losses.get("pearson")(logits, p), rtol=1e-4)
    # The registry composes the confidence term with it, +conf included.
    np.testing.assert_allclose(
        losses.get(name + "+conf")(logits, p, progress=0.05),
        losses.get("pearson+conf")(logits, p, progress=0.05), rtol=1e-4)
    np.testing.assert_allclose(
        losses.get(name, confidence=0.3, eps=1e-6)(logits, p, progress=0.1),
        losses.get("pearson", confidence=0.3, eps=1e-6)(logits, p,
                                                        progress=0.1),
        rtol=1e-4)
    with pytest.raises(ValueError, match="already registered"):
      losses.register(name, factory)
  finally:
    registry._REGISTRY.pop(name, None)  # pylint: disable=protected-access
  assert name + "+conf" not in losses.names()
  with pytest.raises(ValueError, match="reserves"):
    losses.register("mine+conf", factory)


def test_resolve():
  assert losses.resolve("js") == ("js", {})
  assert losses.resolve("js+conf") == ("js", {
      "confidence": 0.5, "warmup": 0.1, "confidence_schedule": "burns"})
  assert losses.resolve("logconf") == ("logconf", {"confidence": 0.75,
                                                   "warmup": 0.2})
  assert losses.CONFIDENCE_HPARAMS == ("confidence", "warmup",
                                       "confidence_schedule")
  with pytest.raises(ValueError, match="Unknown loss 'jsd'"):
    losses.resolve("jsd")


def test_the_package_init_only_re_exports():
  # The registry lives in losses/registry.py; __init__ defines nothing of its own.
  import ast  # pylint: disable=g-import-not-at-top

  path = os.path.join(_REPO, "w2sg_jax", "losses", "__init__.py")
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      continue
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
      continue  # The docstring.
    targets = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
    assert targets == ["__all__"], f"line {node.lineno}: {ast.dump(node)[:80]}"
  assert set(losses.__all__) <= set(dir(losses))
  assert losses.get is registry.get and losses.names is registry.names
