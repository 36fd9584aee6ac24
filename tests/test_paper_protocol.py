"""The paper protocol's options: per-seed noise subsets, per-seed weak models, the ceiling's split,
and the single-turn builder that keeps the authors' split."""

import json
import os

import numpy as np
import pytest

from tests.test_pipeline import _config
from w2sg_jax import config as schema
from w2sg_jax import cache as cache_lib
from w2sg_jax import config_lib, pipeline, stages as stages_lib, tasks
from w2sg_jax.data import preference as preference_lib
from w2sg_jax.labels import noise as noise_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINGLE_TURN = os.path.join(REPO, "tests", "fixtures", "data", "hh-single-turn")


def _synthetic(tmp_path, **overrides):
  config = _config("synthetic", "smoke", **{"student.losses": ("xent",), "cache_dir": str(tmp_path / "cache"),
                                            **overrides})
  return config


def _with(config, **dotted):
  with config.unlocked():
    for key, value in dotted.items():
      *parents, leaf = key.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


# ----------------------------------------------------------- noise per seed


def test_noise_subset_is_fixed_or_drawn_per_student_seed(tmp_path):
  fixed = stages_lib.Stages(schema.Experiment.from_configdict(_synthetic(tmp_path)), tasks.get("synthetic"), cache_lib.Cache(str(tmp_path / "c")))
  per_seed = stages_lib.Stages(schema.Experiment.from_configdict(_synthetic(tmp_path, **{"student.noise.per_seed": True})), tasks.get("synthetic"),
                               cache_lib.Cache(str(tmp_path / "c")))
  s1, s2 = fixed.student_seeds
  assert fixed.noise_spec(0.2, s1) == fixed.noise_spec(0.2, s2)  # One subset for every student.
  assert per_seed.noise_spec(0.2, s1).seed == s1 and per_seed.noise_spec(0.2, s2).seed == s2
  masks = [noise_lib.corruption_mask(2048, per_seed.noise_spec(0.2, s)) for s in (s1, s2, s1)]
  assert (masks[0] != masks[1]).any()  # Subsets differ across seeds...
  np.testing.assert_array_equal(masks[0], masks[2])  # ...and are fixed within one.
  assert masks[0].sum() == masks[1].sum() == round(0.2 * 2048)


@pytest.fixture(scope="module")
def per_seed_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("per_seed")
  config = _synthetic(tmp, **{"student.noise.per_seed": True})
  _with(config, **{"weak.per_seed": True, "ceiling": config_lib.ceiling_config("weak_train")})
  results = pipeline.Pipeline(schema.Experiment.from_configdict(config), str(tmp / "run"), tasks.get("synthetic")).run()
  return tmp, config, results


@pytest.mark.slow
def test_per_seed_noise_reaches_each_students_labels(per_seed_run):
  tmp, config, _ = per_seed_run
  cache = cache_lib.Cache(config.cache_dir)
  stages = stages_lib.Stages(schema.Experiment.from_configdict(config), tasks.get("synthetic"), cache)
  data = stages.data()
  weak = stages.weak(data)
  students = stages.students(data, weak)
  assert not cache.computed()  # Everything was in the cache.
  noisy = {}
  for run in students.runs:
    manifest = json.loads(open(os.path.join(run.cache_entry, cache_lib.MANIFEST)).read())
    store = stages.noisy_store(weak.stores_for(run.seed)["w2s_train"], stages.noise_spec(run.noise, run.seed))
    assert manifest["components"]["labels"] == store.hash  # The student learnt from its own seed's subset.
    if run.noise > 0:
      assert store.noise.seed == run.seed
      noisy[run.seed] = store.corrupted
  a, b = noisy.values()
  assert (a != b).any()


@pytest.mark.slow
def test_weak_per_seed_trains_one_weak_model_per_seed_and_a_rerun_reuses_them(per_seed_run):
  tmp, config, results = per_seed_run
  seeds = [config.seed + 1 + i for i in range(config.seeds)]
  assert results["weak"]["weak_model_runs"] == len(seeds)
  weak_entries = [d for d in os.listdir(tmp / "cache" / "weak") if not d.startswith(".")]
  assert len(weak_entries) == len(seeds)
  manifests = [json.loads((tmp / "cache" / "weak" / d / cache_lib.MANIFEST).read_text()) for d in weak_entries]
  assert sorted(m["components"]["seed"] for m in manifests) == seeds
  # A model is keyed by its seed and settings; which option asked for that seed is not one of them.
  assert all("per_seed" not in m["components"]["weak"] for m in manifests)

  cache = cache_lib.Cache(config.cache_dir)
  stages = stages_lib.Stages(schema.Experiment.from_configdict(config), tasks.get("synthetic"), cache)
  weak = stages.weak(stages.data())
  assert weak.weak_model_runs == 0 and not cache.computed("weak")
  assert sorted(weak.seed_stores) == seeds
  hashes = {s: weak.stores_for(s)["w2s_train"].hash for s in seeds}
  assert len(set(hashes.values())) == len(seeds)  # Each student seed has its own weak labels.
  assert weak.test_accuracy == pytest.approx(np.mean([
      np.mean(np.argmax(weak.stores_for(s)["test"].probs, -1) == stages.data().splits["test"].labels) for s in seeds]))

  second = pipeline.Pipeline(schema.Experiment.from_configdict(config), str(tmp / "rerun"), tasks.get("synthetic")).run()
  assert second["weak"]["weak_model_runs"] == 0 and second["cache"]["computed"] == []
  assert second["summary"] == results["summary"]


@pytest.mark.slow
def test_ceiling_trains_on_the_chosen_split(per_seed_run):
  tmp, config, results = per_seed_run
  entries = [d for d in os.listdir(tmp / "cache" / "ceiling") if not d.startswith(".")]
  for d in entries:
    manifest = json.loads((tmp / "cache" / "ceiling" / d / cache_lib.MANIFEST).read_text())
    assert manifest["components"]["train_split"] == "weak_train"
  cache = cache_lib.Cache(config.cache_dir)
  stages = stages_lib.Stages(schema.Experiment.from_configdict(config), tasks.get("synthetic"), cache)
  data = stages.data()
  truth = stages.truth_store(data, "weak_train")
  assert {json.loads((tmp / "cache" / "ceiling" / d / cache_lib.MANIFEST).read_text())["components"]["labels"]
          for d in entries} == {truth.hash}


def test_an_unknown_ceiling_split_is_a_clear_error(tmp_path):
  config = _with(_synthetic(tmp_path), ceiling=config_lib.ceiling_config("test"))
  with pytest.raises(schema.ConfigError, match=r"ceiling.split='test'.*weak_train"):
    schema.Experiment.from_configdict(config)


def test_default_keys_are_unchanged_by_the_options(tmp_path):
  """A config that leaves the options out keys its weak model and ceiling as one that writes them at their
  defaults, and a weak model's key is the model's settings, not which seeds asked for it (per_seed)."""
  plain = stages_lib.Stages(schema.Experiment.from_configdict(_synthetic(tmp_path)), tasks.get("synthetic"), cache_lib.Cache(str(tmp_path / "c")))
  off = _with(_synthetic(tmp_path), **{"weak.per_seed": False, "ceiling": config_lib.ceiling_config()})
  off = stages_lib.Stages(schema.Experiment.from_configdict(off), tasks.get("synthetic"), cache_lib.Cache(str(tmp_path / "c")))
  data = plain.data()
  assert plain.weak_components(data) == off.weak_components(data)
  assert "per_seed" not in plain.weak_components(data)
  assert plain.weak_seeds == [0] and plain.ceiling_split == off.ceiling_split == "w2s_train"


# ------------------------------------------------------ the single-turn files


def test_single_turn_builder_keeps_the_given_split(tmp_path):
  expected = json.loads(open(os.path.join(REPO, "tests", "fixtures", "data", "hh-single-turn_expected.json")).read())
  data_dir = str(tmp_path / "tfds")
  for split in ("weak_train", "w2s_train", "test"):
    got = preference_lib.load_preferences("hh_rlhf", preference_lib.SINGLE_TURN, split, data_dir=data_dir,
                                          manual_dir=SINGLE_TURN, download=False)
    want = expected[split]["examples"]
    assert list(got["chosen"]) == [e["chosen"] for e in want]  # Same pairs, same order: the file's split.
    assert list(got["prompt"]) == [e["prompt"] for e in want]
    assert list(got["id"]) == [preference_lib.pair_id(e["chosen"], e["rejected"]) for e in want]
  stats = preference_lib.preference_cleanup_stats("hh_rlhf", preference_lib.SINGLE_TURN, data_dir=data_dir,
                                                  manual_dir=SINGLE_TURN, download=False)
  for split in ("weak_train", "w2s_train", "test"):
    assert stats[split] == expected[split]["stats"]
    assert stats["sources"][split]["file"] == preference_lib.SINGLE_TURN_FILES[split]


def test_single_turn_files_have_no_url_and_say_where_they_come_from(tmp_path):
  with pytest.raises(FileNotFoundError, match="harmless_train_gt.jsonl.*Yao et al"):
    preference_lib.load_preferences("hh_rlhf", preference_lib.SINGLE_TURN, "test", data_dir=str(tmp_path),
                                    manual_dir=str(tmp_path / "empty"), download=True)


def test_paper_config_on_the_single_turn_files_keeps_their_split(tmp_path):
  config = schema.Experiment.from_configdict(config_lib.load_config(
      os.path.join(REPO, "experiments", "paper_hh.py:single_turn_smoke"), {"cache_dir": str(tmp_path / "cache")}))
  expected = json.loads(open(os.path.join(REPO, "tests", "fixtures", "data", "hh-single-turn_expected.json")).read())
  splits = tasks.get("preference").splits(config, config.cache_dir)
  for split, part in splits.items():
    want = [preference_lib.pair_id(e["chosen"], e["rejected"]) for e in expected[split]["examples"]]
    assert list(part.ids) == want[: getattr(config.data.sizes, split)]  # The first n of its own file, in order.
  # The pair the authors' files hold in both weak_train and test stays in both.
  assert splits["weak_train"].ids[0] in set(splits["test"].ids)


# --------------------------------------------------------------- the configs


@pytest.mark.parametrize("name", ["paper_hh", "paper_cai"])
def test_paper_configs_follow_the_authors_code_and_run_both_pearson_directions(name):
  c = config_lib.load_config(os.path.join(REPO, "experiments", f"{name}.py"))
  assert {"pearson", "neyman", "tv"} <= set(c.student.losses)
  assert {"pearson+conf", "neyman+conf"} <= set(c.student.losses)
  assert c.student.noise.per_seed is True and c.weak.per_seed is True
  assert c.ceiling.split == "weak_train"
  assert (c.data.sizes.weak_train, c.data.sizes.w2s_train, c.data.sizes.test) == (4000, 4000, 4000)
  assert c.data.max_length == 512 and c.student.noise.scale == -1.0
