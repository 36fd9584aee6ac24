"""``python -m w2sg_jax.bench --quick``: the harness runs end to end and reports every section.

The figures themselves are machine-dependent and are not asserted on, but
everything that can be checked without timing is: every section is present,
numbers are finite and positive where they must be, the FLOP counts agree
with the analytic formula, the device-scaling run trains the same parameters
on 1 and 8 devices, and the memory probe measures its own child.
"""

import json
import math
import os
import subprocess
import sys
import time

import pytest

from w2sg_jax import bench
from w2sg_jax.bench import memory, report, timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # The benchmark runs on one device, as `make bench` does.
  env["JAX_PLATFORMS"] = "cpu"
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "w2sg_jax.bench", "--quick", f"--outdir={out}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  elapsed = time.perf_counter() - t0
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "bench.json") as f:
    results = json.load(f)
  return results, (out / "report.md").read_text(), elapsed, proc.stdout


def test_quick_run_is_quick(quick_run):
  _, _, elapsed, _ = quick_run
  assert elapsed < 90, f"--quick took {elapsed:.0f} s"  # < 60 s on an idle 2-core machine.


def test_every_section_present_without_errors(quick_run):
  results, md, _, stdout = quick_run
  assert set(results["sections"]) == set(bench.SECTIONS)
  for key, sec in results["sections"].items():
    assert "error" not in sec, f"section {key} failed: {sec['error']}\n{stdout[-2000:]}"
  for title in report.SECTION_TITLES.values():
    assert f"## {title}" in md
  assert md.startswith("# w2sg-jax benchmarks")
  assert md.index("## Headline") < md.index("## a.")
  assert "## Performance notes" in md


def test_training_step_figures(quick_run):
  results, md, _, _ = quick_run
  a = results["sections"]["a"]
  assert [m["name"] for m in a["models"]] == ["minilm", "gpt2"]
  for m in a["models"]:
    jx = m["jax"]
    assert jx["examples_per_s"] > 0 and math.isfinite(jx["examples_per_s"])
    assert jx["step"]["min_s"] <= jx["step"]["median_s"] <= jx["step"]["max_s"]
    assert m["jax_compile_s"] > 0
    # XLA's count of the step and the analytic transformer count agree to within
    # the elementwise/optimizer work the formula leaves out.
    xla, analytic = m["flops"]["xla"], m["flops"]["analytic"]
    assert 0.9 < xla / analytic < 1.6, (xla, analytic)
    # Splitting the batch into independent chains computes the same step.
    assert m["first_loss"]["jax_chains"] == pytest.approx(m["first_loss"]["jax"], abs=1e-6)
    if "torch" in m["first_loss"]:  # torch installed: same weights, same first loss.
      assert m["first_loss"]["jax"] == pytest.approx(m["first_loss"]["torch"], abs=1e-4)
    else:
      assert "pip install -e '.[bench]'" in m["torch_eager"]
    prof = m["jax_profile"]
    assert prof["by_kind"]["matmul"] > 0 and prof["busy_ms"] > 0 and prof["wall_ms"] > 0
  assert a["peak_gflops"] > 0
  # Headline first, one row per model at least.
  headline = md.split("## Headline")[1].split("## a.")[0]
  assert headline.count("train step,") == 2


def test_state_bytes_match_parameter_count(quick_run):
  results, _, _, _ = quick_run
  for m in results["sections"]["a"]["models"]:
    p, o = m["jax_state_bytes"]["params"], m["jax_state_bytes"]["opt_state"]
    # AdamW keeps two float32 moments per parameter (plus step counters).
    assert 2 * p <= o <= 2 * p + 1024


def test_loss_overhead_rows(quick_run):
  results, _, _, _ = quick_run
  rows = results["sections"]["d"]["rows"]
  assert rows[0]["loss"] == "xent" and rows[0]["relative_to_xent"] == pytest.approx(1.0)
  assert all(r["loss_alone_us"] > 0 and r["step_s"] > 0 for r in rows)


def test_sweep_and_stream_rows(quick_run):
  results, _, _, _ = quick_run
  c = results["sections"]["c"]["rows"]
  assert [r["k"] for r in c] == [1, 4]
  for r in c:
    assert r["speedup"] == pytest.approx(r["sequential_s"] / r["vmapped_s"])
  feeds = [r["feed"] for r in results["sections"]["e"]["rows"]]
  assert feeds == ["memory", "grain (prefetch)", "grain (no prefetch)", "grain from disk"]


def test_scaling_is_correct_across_device_counts(quick_run):
  results, md, _, _ = quick_run
  f = results["sections"]["f"]
  assert [r["devices"] for r in f["rows"]] == [1, 2, 4, 8]
  assert all(r["max_param_diff_vs_1"] < 1e-5 for r in f["rows"])
  assert all(r["traces"] == 1 for r in f["rows"])
  assert "correctness and overhead only" in md


def test_memory_section(quick_run):
  results, _, _, _ = quick_run
  g = results["sections"]["g"]
  assert 50 < g["jax_floor"]["peak_rss_mib"] < 2000
  assert "skipped" in g["experiment"]
  assert set(g["state_sizes"]) == {m["label"] for m in results["sections"]["a"]["models"]}


def test_peak_rss_measures_the_child_not_the_parent():
  """The child allocates ~200 MiB more than a bare interpreter; the parent's size must not leak in."""
  code = "import numpy as np; a = np.ones(200 * 2**20 // 8); a += 1"
  big = memory.peak_rss_of([sys.executable, "-c", code], timeout_s=60)
  small = memory.peak_rss_of([sys.executable, "-c", "pass"], timeout_s=60)
  assert big["returncode"] == 0 and small["returncode"] == 0
  assert 150 < big["peak_rss_mib"] - small["peak_rss_mib"] < 300
  assert small["peak_rss_mib"] < 100


def test_peak_rss_reports_failure_and_timeout():
  bad = memory.peak_rss_of([sys.executable, "-c", "raise SystemExit('nope')"], timeout_s=60)
  assert bad["returncode"] == 1 and "nope" in bad["error"]
  slow = memory.peak_rss_of([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=1)
  assert slow["returncode"] != 0 and "stopped after" in slow["error"]


def test_parse_only():
  assert bench.parse_only("a, c") == ("a", "c")
  assert bench.parse_only("c,a") == ("a", "c")
  assert bench.parse_only(None) == bench.SECTIONS
  with pytest.raises(ValueError, match=r"unknown benchmark section\(s\) z; choose from a,b,c,d,e,f,g"):
    bench.parse_only("a,z")


def test_timing_summary_is_the_median():
  t = timing.summarize([3.0, 1.0, 2.0, 10.0, 4.0])
  assert (t.median_s, t.min_s, t.max_s, t.reps) == (3.0, 1.0, 10.0, 5)
  with pytest.raises(ValueError, match="reps >= 1"):
    timing.summarize([])


def test_report_marks_missing_sections(tmp_path):
  results = {"meta": {**timing.machine_info(), "quick": True, "total_s": 0.0},
             "sections": {"c": {"error": "boom"}}}
  md, _ = report.write(results, str(tmp_path))
  text = open(md).read()
  assert "## a. Training step vs PyTorch\n\nNot run (excluded by --only)." in text
  assert "## c. Vectorised sweeps\n\nFailed: boom" in text


def test_chained_apply_is_the_same_step_on_eight_devices():
  """The proposed batch-in-chains step trains the same parameters, also when the batch is sharded."""
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from tests.helpers import tiny
  from w2sg_jax import losses, parallel, train
  from w2sg_jax.bench import step

  assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices (see tests/conftest.py)"
  x, probs = tiny.data()
  mesh = parallel.make_mesh(8)
  tx, schedule = train.make_optimizer(tiny.OPT, 10)
  finals = []
  for chains in (1, 4):
    apply_fn, params, frozen = train.split_model(tiny.TinyMLP(rngs=nnx.Rngs(0)))
    apply_fn = step.chained_apply(apply_fn, chains)
    state = parallel.replicate(train.init_state(params, frozen, tx, 0), mesh)
    run = jax.jit(functools.partial(train.train_step, apply_fn=apply_fn, loss_fn=losses.get("js"), tx=tx,
                                    schedule=schedule, num_steps=10),
                  in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                  out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)))
    it = tiny.batches(x, probs, 64)(0)
    for _ in range(10):
      state, _ = run(state, parallel.to_global(next(it), mesh))
    finals.append(jax.tree.leaves(jax.device_get(state.params)))
  for a, b in zip(*finals):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  # Row order is restored: logits of the chained apply equal the plain ones row by row.
  apply_fn, params, frozen = train.split_model(tiny.TinyMLP(rngs=nnx.Rngs(0)))
  feats = jnp.asarray(x[:32])
  plain = apply_fn(params, frozen, {"features": feats}, None)
  chained = step.chained_apply(apply_fn, 4)(params, frozen, {"features": feats}, None)
  np.testing.assert_allclose(np.asarray(chained), np.asarray(plain), atol=1e-6)
  with pytest.raises(ValueError, match="does not split into 3 chains"):
    step.chained_apply(apply_fn, 3)(params, frozen, {"features": feats}, None)
