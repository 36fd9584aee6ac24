"""Many runs over many hosts (issue 21): ``--worker=i/N`` splits the training runs by cache key.

The fast tests check the split itself (`w2sg_jax.workers`), the cache's side
(`Cache.get_or_create_group` with a ``worker`` or ``report_only``), the
pipeline's side on a stub of the stages, and the flags. The slow test runs the
synthetic smoke experiment as two concurrent worker processes on one cache,
then a ``--report_only`` pass, and compares its results with one process on a
fresh cache, bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from w2sg_jax import hashing
from w2sg_jax import cache as cache_lib
from w2sg_jax import cli, config_lib, pipeline, workers
from w2sg_jax import main as main_lib
from w2sg_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ the split


@pytest.mark.parametrize("count", [1, 2, 3])
def test_every_key_is_owned_by_exactly_one_worker(count):
  rng = random.Random(count)
  keys = [f"{rng.getrandbits(256):064x}" for _ in range(2000)]
  keys += [cache_lib.stage_key("student", {"seed": i}) for i in range(50)]  # Real keys too.
  crew = [workers.Worker(i, count) for i in range(count)]
  for key in keys:
    assert sum(w.owns(key) for w in crew) == 1, key
  if count > 1:  # Every worker gets a share (2000 random keys: each share is far from empty).
    shares = [sum(w.owns(k) for k in keys) for w in crew]
    assert min(shares) > len(keys) / count / 2, shares


def test_parse_reads_i_of_n():
  assert workers.parse("1/3") == workers.Worker(1, 3)
  assert workers.parse(" 0/1 ") == workers.Worker(0, 1)
  assert str(workers.parse("2/5")) == "2/5"


@pytest.mark.parametrize("value, says", [
    ("2/2", r"0\.\.1"), ("a/b", "write i/N"), ("-1/3", r"0\.\.2"), ("1/0", "at least 1"), ("3", "write i/N"),
    ("1/2/3", "write i/N"), ("", "write i/N"),
])
def test_parse_errors_say_how_to_write_it(value, says):
  with pytest.raises(workers.WorkerError, match=says) as info:
    workers.parse(value)
  assert "\n" not in str(info.value) and repr(value) in str(info.value)
  assert isinstance(info.value, ValueError)  # The CLI boundary makes it one paragraph with exit status 2.


def test_worker_checks_its_own_fields():
  with pytest.raises(workers.WorkerError):
    workers.Worker(2, 2)
  with pytest.raises(workers.WorkerError):
    workers.Worker(0, 0)


def test_environment_precedence():
  slurm = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
  both = {**slurm, "W2SG_WORKER": "1/3"}
  assert workers.from_environment("", {}) is workers.ALL is None
  assert workers.from_environment(None, {}) is None
  assert workers.from_environment("", slurm) == workers.Worker(2, 4)
  assert workers.from_environment("", both) == workers.Worker(1, 3)  # W2SG_WORKER over Slurm.
  assert workers.from_environment("0/2", both) == workers.Worker(0, 2)  # The flag over both.
  assert workers.from_environment("0/1", slurm).owns("f" * 64)  # --worker=0/1: every run, in a job array too.
  # An array numbered from 1 (--array=1-4), and one with a step (--array=0-6:2).
  assert workers.from_environment("", {**slurm, "SLURM_ARRAY_TASK_MIN": "1"}) == workers.Worker(1, 4)
  stepped = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"}
  assert workers.from_environment("", stepped) == workers.Worker(2, 4)
  assert workers.from_environment("", slurm).source.startswith("SLURM")
  with pytest.raises(workers.WorkerError, match="W2SG_WORKER='5/2'"):
    workers.from_environment("", {"W2SG_WORKER": "5/2"})
  with pytest.raises(workers.WorkerError, match="--worker=i/N"):
    workers.from_environment("", {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4"})
  with pytest.raises(workers.WorkerError, match="--worker=i/N"):
    workers.from_environment("", {"SLURM_ARRAY_TASK_ID": "1"})


# ------------------------------------------------------------------ the cache


def _group(n=6):
  components = [{"run": i} for i in range(n)]
  keys = [cache_lib.stage_key("student", c) for c in components]
  return components, keys


def _producer(calls):
  def produce_group(todo, work_dirs):
    assert len(todo) == len(work_dirs)
    calls.append(list(todo))

    def writer(i):
      def write(out_dir):
        np.save(os.path.join(out_dir, "x.npy"), np.asarray(i))
        return {"run": i}
      return write
    return [writer(i) for i in todo]
  return produce_group


def _group_owner(keys):
  """The key that decides a group's worker, as `Cache.get_or_create_group` computes it."""
  return hashing.content_hash({"group": sorted(set(keys))})


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_a_group_belongs_to_one_worker_whole(tmp_path, order):
  """The owner trains the whole group (the same program one process would run); the other trains none of it."""
  components, keys = _group()
  owner = next(w for w in range(2) if workers.Worker(w, 2).owns(_group_owner(keys)))
  first, last = order
  cache, calls = cache_lib.Cache(str(tmp_path), worker=workers.Worker(first, 2)), []
  if first == owner:
    entries = cache.get_or_create_group("student", components, _producer(calls))
    assert calls == [list(range(6))] and [e.info["run"] for e in entries] == list(range(6))
  else:
    with pytest.raises(cache_lib.RunsOfOtherWorkers) as info:
      cache.get_or_create_group("student", components, _producer(calls))
    assert calls == [] and info.value.stage == "student" and info.value.keys == sorted(keys)
    assert "6 student runs" in str(info.value) and "other workers" in str(info.value)
    assert all(cache.open("student", k) is None for k in keys)
  cache, calls = cache_lib.Cache(str(tmp_path), worker=workers.Worker(last, 2)), []
  if last == owner:
    entries = cache.get_or_create_group("student", components, _producer(calls))
    assert calls == [list(range(6))]
  else:  # The owner went first: the group is whole, nothing to do.
    entries = cache.get_or_create_group("student", components, _producer(calls))
    assert calls == [] and not any(e.computed for e in entries)
  # A plain cache finds all six.
  plain, calls = cache_lib.Cache(str(tmp_path)), []
  entries = plain.get_or_create_group("student", components, _producer(calls))
  assert calls == [] and [e.info["run"] for e in entries] == list(range(6))


def test_an_explicit_owner_keeps_a_chain_of_groups_with_one_worker(tmp_path):
  """Two groups with one ``owner`` (an s2s chain's rounds) go to the same worker."""
  first, second = [{"round": 0, "seed": s} for s in range(3)], [{"round": 1, "seed": s} for s in range(3)]
  chain = hashing.content_hash({"chain": "s2s"})
  for w in range(3):
    cache = cache_lib.Cache(str(tmp_path / str(w)), worker=workers.Worker(w, 3))
    done = []
    for group in (first, second):
      try:
        cache.get_or_create_group("student", group, _producer([]), owner=chain)
        done.append(True)
      except cache_lib.RunsOfOtherWorkers:
        done.append(False)
    assert done[0] == done[1] == workers.Worker(w, 3).owns(chain)


def test_a_worker_produces_the_upstream_stages_whole(tmp_path):
  components, _ = _group()
  calls = []
  entries = cache_lib.Cache(str(tmp_path), worker=workers.Worker(0, 2)).get_or_create_group(
      "labels", components, _producer(calls))
  assert calls == [list(range(6))] and len(entries) == 6


def test_worker_skips_a_single_entry_of_another_worker(tmp_path):
  components = next(c for c in ({"run": i} for i in range(100))
                    if not workers.Worker(0, 2).owns(cache_lib.stage_key("ceiling", c)))
  cache = cache_lib.Cache(str(tmp_path), worker=workers.Worker(0, 2))
  with pytest.raises(cache_lib.RunsOfOtherWorkers):
    cache.get_or_create("ceiling", components, lambda out, work: pytest.fail("produced another worker's run"))
  assert cache.get_or_create("weak", components, lambda out, work: {"ok": 1}).info == {"ok": 1}


def test_report_only_produces_nothing_and_names_every_missing_run(tmp_path):
  components, keys = _group()
  cache, calls = cache_lib.Cache(str(tmp_path), report_only=True), []
  for stage in cache_lib.SPLIT_STAGES:
    with pytest.raises(cache_lib.RunsOfOtherWorkers, match=f"6 {stage} runs are not in the cache") as info:
      cache.get_or_create_group(stage, components, _producer(calls))
    assert info.value.stage == stage and info.value.report_only
    assert sorted(info.value.keys) == sorted(cache_lib.stage_key(stage, c) for c in components)
  assert calls == [] and cache.events == [] and not list(tmp_path.rglob("manifest.json"))
  # Once the runs exist (made by any process), report-only reads them.
  cache_lib.Cache(str(tmp_path)).get_or_create_group("student", components, _producer(calls))
  assert [e.key for e in cache.get_or_create_group("student", components, _producer(calls))] == keys
  assert len(calls) == 1


# ------------------------------------------------------------------ the pipeline, on stub stages


class _StubStages:
  """The stages' side of the contract on a cache: groups of runs, `missing_runs` collected per group."""

  GROUPS = {"ceiling": [[{"seed": s} for s in range(2)]],
            "student": [[{"loss": loss, "seed": s} for s in range(4)] for loss in ("a", "b", "c")]}
  collects = True  # False: a stage lets RunsOfOtherWorkers escape (the pipeline notes it itself).

  def __init__(self, config, task, cache):
    del config, task
    from w2sg_jax import stages as stages_lib

    self.cache = cache
    self.profile = stages_lib.Profile()
    self.curves = []
    if self.collects:
      self.missing_runs = []

  def data(self):
    class Data:
      fingerprint = "stub"
    return Data()

  def weak(self, data):
    del data
    return "weak"

  def _groups(self, stage):
    out = []
    for components in self.GROUPS[stage]:
      try:
        out.append(self.cache.get_or_create_group(stage, components, _producer([])))
      except cache_lib.RunsOfOtherWorkers as e:
        if not self.collects:
          raise
        self.missing_runs.extend((e.stage, k) for k in e.keys)
    return out

  def ceiling(self, data):
    del data
    return self._groups("ceiling")

  def students(self, data, weak):
    del data, weak
    return self._groups("student")


def _stub_pipeline(monkeypatch, tmp_path, collects=True):
  import ml_collections

  monkeypatch.setattr(pipeline.stages_lib, "Stages", _StubStages)
  monkeypatch.setattr(_StubStages, "collects", collects)
  monkeypatch.setattr(pipeline.Pipeline, "validate", lambda self: None)
  monkeypatch.setattr(pipeline.Pipeline, "report", lambda self, weak, ceiling, students: {
      "runs": [e.info["run"] for group in students for e in group], "ceiling": [e.info["run"] for e in ceiling[0]]})
  config = ml_collections.ConfigDict({"name": "stub", "cache_dir": str(tmp_path / "cache")})

  def run(worker=None, report_only=False):
    return pipeline.Pipeline(config, str(tmp_path / "run"), task=None, worker=worker, report_only=report_only).run()
  return run


def _all_keys():
  return {(stage, cache_lib.stage_key(stage, c)) for stage, groups in _StubStages.GROUPS.items()
          for group in groups for c in group}


def _owned(w, n=2):
  """The runs worker ``w`` of ``n`` trains: every run of each group it owns (groups go whole to one worker)."""
  out = set()
  for stage, groups in _StubStages.GROUPS.items():
    for group in groups:
      keys = [cache_lib.stage_key(stage, c) for c in group]
      if workers.Worker(w, n).owns(_group_owner(keys)):
        out |= {(stage, k) for k in keys}
  return out


@pytest.mark.parametrize("collects", [True, False])
def test_report_only_on_an_empty_cache_fails_naming_the_missing_runs(monkeypatch, tmp_path, collects):
  run = _stub_pipeline(monkeypatch, tmp_path, collects)
  with pytest.raises(pipeline.MissingRunsError) as info:
    run(report_only=True)
  text = str(info.value)
  assert "ceiling 2 (" in text and "report-only" in text and "--worker=i/N" in text and "\n" not in text
  if collects:  # Every group was asked for: all 14 runs are named.
    assert "14 runs" in text and "student 12 (" in text and set(info.value.missing) == _all_keys()
  assert not list((tmp_path / "cache").rglob("manifest.json"))  # Nothing was produced.
  assert not (tmp_path / "run" / "results.json").exists()
  assert "failed (MissingRunsError" in (tmp_path / "run" / workdir_lib.MARKER).read_text()
  message, status = main_lib.explain(info.value, ["main"])
  assert status == 1 and message.startswith("error: report-only:")


def test_workers_then_report_only(monkeypatch, tmp_path, caplog):
  run = _stub_pipeline(monkeypatch, tmp_path)
  first = run(worker=workers.Worker(0, 2))
  # Worker 0 trained its own runs, wrote no report, and says so in INCOMPLETE; nothing "failed".
  assert first["report"] is False and first["worker"] == "0/2"
  assert first["trained_runs"] == len(_owned(0))
  assert {(r["stage"], r["key"]) for r in first["missing_runs"]} == _owned(1)
  marker = (tmp_path / "run" / workdir_lib.MARKER).read_text()
  assert "ran as worker 0/2" in marker and f"trained {len(_owned(0))} runs" in marker and "--report_only" in marker
  assert "failed" not in marker
  assert not (tmp_path / "run" / "results.json").exists()
  assert not [n for n in os.listdir(tmp_path / "run") if n.startswith(".pending")]
  # Report-only still fails: worker 1's runs are missing, and only those are named.
  with pytest.raises(pipeline.MissingRunsError) as info:
    run(report_only=True)
  assert set(info.value.missing) == _owned(1)
  # Worker 1 finishes last: it finds every run in the cache and writes the report itself.
  last = run(worker=workers.Worker(1, 2))
  assert last["runs"] == list(range(4)) * 3 and last["ceiling"] == [0, 1]
  assert not (tmp_path / "run" / workdir_lib.MARKER).exists()
  assert json.loads((tmp_path / "run" / "results.json").read_text())["runs"] == last["runs"]
  computed = {e.key for e in _cache_events(last)}
  assert computed == {key for _, key in _owned(1)}
  # A report-only pass now reads every run and trains nothing.
  again = run(report_only=True)
  assert again["runs"] == last["runs"] and again["cache"]["computed"] == []


def _cache_events(results):
  """The computed entries results.json lists, as (stage, key prefix) objects."""
  class Event:
    def __init__(self, text):
      self.stage, prefix = text.split("/")
      self.key = next(k for s, k in _all_keys() if s == self.stage and k.startswith(prefix))
  return [Event(t) for t in results["cache"]["computed"]]


def test_a_worker_whose_runs_escape_the_stages_still_ends_cleanly(monkeypatch, tmp_path):
  run = _stub_pipeline(monkeypatch, tmp_path, collects=False)
  out = run(worker=workers.Worker(0, 2))
  assert out["report"] is False and out["missing_runs"]
  assert "ran as worker 0/2" in (tmp_path / "run" / workdir_lib.MARKER).read_text()


# ------------------------------------------------------------------ the flags


def test_bad_worker_flag_is_a_usage_error(tmp_path, capsys):
  status = cli.main(["run", "synthetic:smoke", "--workdir", str(tmp_path / "run"), "--worker", "2/2",
                     "--set", f"cache_dir={tmp_path / 'cache'}"])
  err = capsys.readouterr().err
  assert status == 2, err
  assert "--worker='2/2'" in err and "0..1" in err and "Traceback" not in err
  assert not (tmp_path / "cache").exists()


def test_run_help_describes_the_flags(capsys):
  assert cli.main(["run", "--help"]) == 0
  out = capsys.readouterr().out
  assert "--worker i/N" in out and "--report-only" in out and "SLURM_ARRAY_TASK_ID" in out


def test_cli_passes_the_flags_to_main(monkeypatch, tmp_path):
  seen = {}

  def fake_run(config, workdir, *, worker=None, report_only=False):
    seen.update(worker=worker, report_only=report_only, workdir=workdir)
  monkeypatch.setattr(main_lib, "run", fake_run)
  monkeypatch.setattr("w2sg_jax.validate.check_config", lambda config: {"experiment": config})
  monkeypatch.delenv("W2SG_WORKER", raising=False)
  monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
  monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT", raising=False)
  args = ["run", "synthetic:smoke", "--workdir", str(tmp_path / "run"), "--set", f"cache_dir={tmp_path / 'c'}"]
  assert cli.main([*args, "--worker=1/3"]) == 0
  assert seen["worker"] == workers.Worker(1, 3) and seen["report_only"] is False
  assert cli.main([*args, "--report-only"]) == 0
  assert seen["worker"] is None and seen["report_only"] is True
  monkeypatch.setenv("W2SG_WORKER", "0/2")
  assert cli.main(args) == 0
  assert seen["worker"] == workers.Worker(0, 2) and seen["worker"].source == "W2SG_WORKER"


# ------------------------------------------------------------------ end to end


def _main(workdir, cache_dir, *flags):
  return [sys.executable, "-m", "w2sg_jax.main", "--config=experiments/synthetic.py:smoke", f"--workdir={workdir}",
          f"--config.cache_dir={cache_dir}", "--config.student.losses=(\"xent\",\"kl\")", *flags]


def _numbers(results):
  """What must not depend on how the runs were split: every run's metrics, the baselines, the summary."""
  runs = {(r["loss"], r["noise"], r["seed"]): (r["test_accuracy"], r["test_auroc"], r["misfit_kl"], r["pgr"])
          for r in results["runs"]}
  return runs, results["weak"]["test_accuracy"], results["ceiling"]["test_accuracy_per_seed"], results["summary"]


@pytest.mark.slow
def test_two_workers_and_report_only_equal_one_process(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("W2SG_", "SLURM_ARRAY_"))}
  shared, workdir = tmp_path / "shared", tmp_path / "shared" / "run"
  procs = [subprocess.Popen(_main(workdir, shared, f"--worker={i}/2"), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, out
    assert f"worker {i}/2 (from --worker)" in out and "Traceback" not in out, out
  # Each run was trained once, by its owner: the workers' cache holds exactly the runs of one process.
  entries = lambda root, stage: sorted(n for n in os.listdir(root / stage) if not n.startswith(".")  # noqa: E731
                                       and not n.endswith(".partial"))
  report = subprocess.run(_main(workdir, shared, "--report_only"), cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=900)
  assert report.returncode == 0, report.stderr
  assert not (workdir / workdir_lib.MARKER).exists()
  split = json.loads((workdir / "results.json").read_text())
  assert split["cache"]["computed"] == []  # The report-only pass trained nothing.

  single = subprocess.run(_main(tmp_path / "one", tmp_path / "one_cache"), cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=900)
  assert single.returncode == 0, single.stderr
  one = json.loads((tmp_path / "one" / "results.json").read_text())
  for stage in cache_lib.SPLIT_STAGES:
    assert entries(shared, stage) == entries(tmp_path / "one_cache", stage), stage
  assert len(one["runs"]) == 2 * 2 * 2 and len(split["runs"]) == len(one["runs"])
  assert _numbers(split) == _numbers(one)  # Bit for bit: floats compared with ==.
