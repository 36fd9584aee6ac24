"""The memory plan: real-size models from shipped configs, compiled on simulated devices, and its exit codes."""

import json
import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

from w2sg_jax import plan
from w2sg_jax.models import GPT2, GPT2Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/paper_hh.py:smoke"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)  # Config paths are relative to the repository, as on the command line.


def run_main(tmp_path, *args):
  out = tmp_path / "plan.json"
  code = plan.main([f"--json={out}", *args])
  return code, (json.loads(out.read_text()) if out.exists() else None)


# ---------------------------------------------------------- shipped configs


@pytest.mark.parametrize("name,layers,width,params", [
    ("gpt2", 12, 768, 124_439_808),
    pytest.param("gpt2-medium", 24, 1024, 354_823_168, marks=pytest.mark.slow),
    pytest.param("gpt2-large", 36, 1280, 774_030_080, marks=pytest.mark.slow),
    pytest.param("gpt2-xl", 48, 1600, 1_557_611_200, marks=pytest.mark.slow),
])
def test_shipped_configs_build_the_published_sizes(name, layers, width, params):
  hf = plan.hf_config(name)
  assert plan.hf_config(f"openai-community/{name}") == hf  # Hub ids resolve by their last part.
  assert (hf["model_type"], hf["n_layer"], hf["n_embd"], hf["vocab_size"]) == ("gpt2", layers, width, 50257)
  model = nnx.eval_shape(lambda: GPT2(GPT2Config.from_hf(hf), rngs=nnx.Rngs(0)))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == params


def test_unknown_checkpoint_is_an_error_naming_the_shipped_ones():
  with pytest.raises(plan.PlanError, match="gpt2-medium"):
    plan.hf_config("gpt3-ultra")


# ---------------------------------------------------------------- the plan


@pytest.mark.slow  # Compiles the paper smoke config on 8 simulated devices (~30 s): slow suite.
def test_smoke_plan_fits_and_reports_every_figure(tmp_path):
  code, p = run_main(tmp_path, f"--config={SMOKE}", "--devices=8", "--device-memory=1")
  assert code == 0 and p["fits"]
  assert set(p["roles"]) == {"weak", "strong"}
  s = p["roles"]["strong"]
  d = s["per_device"]
  assert d["params"] > 0 and d["opt_state"] > 0 and d["train"]["temporaries"] > 0
  assert d["train"]["peak"] == d["train"]["arguments"] + d["train"]["outputs"] - d["train"]["aliased"] + d["train"]["temporaries"]
  assert d["train"]["aliased"] > 0  # The state is donated.
  assert s["flops_per_step"] > 0 and s["flops_per_eval_step"] > 0
  assert s["sharding"] == "auto" and s["sharding_resolved"] == "replicated"
  # 3 losses x 2 noise rates x 1 seed + 1 ceiling.
  assert s["whole_config"]["runs"] == 7
  for chip in plan.CHIPS:
    assert p["chips"][chip]["whole_config_s"] > 0


@pytest.mark.slow
def test_does_not_fit_exits_1(tmp_path):
  code, p = run_main(tmp_path, f"--config={SMOKE}", "--devices=8", "--device-memory=0.0001", "--roles=strong")
  assert code == 1 and not p["fits"]


@pytest.mark.slow
def test_fsdp_override_shards_the_state(tmp_path):
  _, rep = run_main(tmp_path, f"--config={SMOKE}", "--roles=strong", "--config.student.train.sharding=replicated")
  _, fsdp = run_main(tmp_path, f"--config={SMOKE}", "--roles=strong", "--config.student.train.sharding=fsdp",
                     "--config.strong.remat=full")
  r, f = rep["roles"]["strong"], fsdp["roles"]["strong"]
  assert (r["sharding_resolved"], f["sharding_resolved"], f["remat"]) == ("replicated", "fsdp", "full")
  assert f["per_device"]["params"] < r["per_device"]["params"] / 4
  assert f["per_device"]["opt_state"] < r["per_device"]["opt_state"] / 4


@pytest.mark.parametrize("args,message", [
    (["--config.student.train.no_such_key=1"], "unknown config key 'student.train.no_such_key'"),
    (["--config.student.train.sharding=zero3"], "student.train.sharding='zero3': unknown sharding"),
    (["--config.strong.remat=some"], "strong.remat='some': unknown remat mode"),
    (["--config.student.train.batch_size=abc"], "batch_size"),
])
def test_errors_exit_2(tmp_path, capsys, args, message):
  code, _ = run_main(tmp_path, f"--config={SMOKE}", "--roles=strong", *args)
  assert code == 2
  assert message in capsys.readouterr().err


def test_missing_config_exits_2(tmp_path, capsys):
  code, _ = run_main(tmp_path, "--config=experiments/nope.py")
  assert code == 2 and "nope.py" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_sets_up_its_own_devices(tmp_path):
  """A fresh process: XLA_FLAGS from the plan itself, whatever the caller set."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
      [sys.executable, "-m", "w2sg_jax.plan", f"--config={SMOKE}", "--devices=4", "--device-memory=1",
       "--roles=weak", f"--json={tmp_path / 'p.json'}"],
      cwd=REPO, env=env, capture_output=True, text=True, check=False,
  )
  assert out.returncode == 0, out.stderr
  assert "on 4 simulated devices" in out.stdout and "fits in 1 GiB" in out.stdout
  assert json.loads((tmp_path / "p.json").read_text())["devices"] == 4


@pytest.mark.slow
def test_replicated_gpt2_does_not_fit_where_fsdp_does(tmp_path):
  """The xl case below in small: 2 layers of GPT-2 small (52 M parameters, 0.6 GB of Adam state) on 8 x 0.5 GiB."""
  small = [f"--config={SMOKE}", "--roles=strong", "--devices=8", "--device-memory=0.5",
           "--config.strong.checkpoint=gpt2", "--config.strong.num_layers=2", "--config.strong.remat=full"]
  code, p = run_main(tmp_path, *small)
  assert code == 0 and p["roles"]["strong"]["sharding_resolved"] == "fsdp"  # 'auto' chose it.
  code, p = run_main(tmp_path, *small, "--config.student.train.sharding=replicated")
  assert code == 1 and p["roles"]["strong"]["per_device"]["opt_state"] > 2**30 / 4


# ------------------------------------------------------ the bench's hook


def test_accelerator_bench_skips_cleanly_on_cpu():
  from w2sg_jax.bench import accelerator

  result = accelerator.run(quick=True)
  assert "skipped" in result and result["platform"] == "cpu"
  assert "skipped" in accelerator.report_lines(result)[0]
  assert accelerator.peak_flops("TPU v5 lite") == ("TPU v5e", 197e12)
  assert accelerator.peak_flops("NVIDIA H100 80GB HBM3") == ("H100", 989e12)
  fake = {"model": "m", "batch_size": 32, "devices": 8, "device": "TPU v4", "sharding": "fsdp", "compile_s": 60.0,
          "step_s": 0.1, "flops_per_step": 1e13, "peak_flops": 275e12, "mfu": 0.36, "peak_memory_bytes": 2**33,
          "xla_memory": {"peak": 2**33}, "plan": {"peak_bytes": 2**33, "flops_per_step": 1e13,
                                                  "step_s_at_plan_mfu": 0.104}}
  text = "\n".join(accelerator.report_lines(fake))
  assert "36.0%" in text and "8.00 GiB" in text and "104 ms" in text


# ------------------------------------------------------------- paper's xl


def _cli(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, "-m", "w2sg_jax.plan", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_paper_xl_fits_eight_v5e_chips_with_fsdp():
  out = _cli("--config=experiments/paper_hh.py:xl", "--devices=8", "--device-memory=16", "--roles=strong")
  assert out.returncode == 0, out.stdout + out.stderr
  assert "sharding fsdp (from 'auto')" in out.stdout


@pytest.mark.slow
def test_paper_xl_does_not_fit_eight_v5e_chips_replicated():
  out = _cli("--config=experiments/paper_hh.py:xl", "--devices=8", "--device-memory=16", "--roles=strong",
             "--config.student.train.sharding=replicated")
  assert out.returncode == 1, out.stdout + out.stderr
  assert "does NOT fit" in out.stdout


@pytest.mark.slow
def test_the_files_task_is_planned_too(tmp_path):
  """`w2sg plan files_example`: the files task's classifiers built from the config alone."""
  path = os.path.join(os.path.dirname(plan.__file__), "experiments", "files_example.py")
  code, p = run_main(tmp_path, f"--config={path}", "--devices=8", "--device-memory=1")
  assert code == 0 and p["fits"] and p["roles"]["strong"]["flops_per_step"] > 0
