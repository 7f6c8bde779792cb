"""Sweep files: grid/zip/random expansion, validation against the base config, trial names."""
import dataclasses
import pathlib
import re

import pytest

from treadle.sweep import spec
from tests.conftest import REPO, run_cli

TINY = str(REPO / "configs" / "tiny.py")


def _sweep(**kw) -> spec.Sweep:
  return spec.Sweep(**{"name": "t", "base_config": TINY, **kw})


def test_grid_times_seeds_is_every_combination_once_in_a_fixed_order():
  lrs, widths = [3e-4, 1e-3, 3e-3], [32, 64]
  sweep = _sweep(fixed={"train.num_steps": 7},
                 axes=[spec.Grid({"optimizer.learning_rate": lrs, "model.embed_dim": widths})],
                 seeds=[0, 1])
  trials = spec.expand(sweep)
  assert len(trials) == 3 * 2 * 2
  combos = [(t.swept["optimizer.learning_rate"], t.swept["model.embed_dim"],
             t.swept["train.seed"]) for t in trials]
  assert sorted(combos) == sorted((lr, w, s) for lr in lrs for w in widths for s in (0, 1))
  assert combos[:3] == [(3e-4, 32, 0), (3e-4, 32, 1), (3e-4, 64, 0)]
  assert [t.index for t in trials] == list(range(12))
  assert all(t.overrides["train.num_steps"] == 7 and "train.num_steps" not in t.swept
             for t in trials)
  assert [t.name for t in spec.expand(sweep)] == [t.name for t in trials]


def test_zip_takes_lists_together_and_combines_with_a_grid():
  trials = spec.expand(_sweep(axes=[
      spec.Zip({"model.embed_dim": [32, 64, 96], "model.num_heads": [2, 4, 6]}),
      spec.Grid({"optimizer.learning_rate": [1e-3, 2e-3]})]))
  assert len(trials) == 6
  assert {(t.swept["model.embed_dim"], t.swept["model.num_heads"]) for t in trials} == {
      (32, 2), (64, 4), (96, 6)}


def test_zip_of_unequal_lists_is_an_error():
  with pytest.raises(spec.SweepError, match="different lengths"):
    spec.expand(_sweep(axes=[spec.Zip({"model.embed_dim": [32, 64], "model.num_heads": [2]})]))


def _random(seed: int, n: int = 12) -> list[dict]:
  block = spec.Random(n=n, seed=seed, params={
      "optimizer.learning_rate": spec.LogUniform(1e-4, 1e-2),
      "model.dropout": spec.Uniform(0.0, 0.3, digits=2),
      "model.embed_dim": spec.Choice([32, 64])})
  return [t.swept for t in spec.expand(_sweep(axes=[block]))]


def test_random_is_deterministic_in_range_rounded_and_distinct():
  points = _random(seed=0)
  assert points == _random(seed=0)
  assert points != _random(seed=1)
  assert len(points) == 12 and len({tuple(p.values()) for p in points}) == 12
  lrs = [p["optimizer.learning_rate"] for p in points]
  assert all(1e-4 <= lr <= 1e-2 for lr in lrs)
  assert all(float(f"{lr:.3g}") == lr for lr in lrs)
  # log-uniform: about half of the draws fall below the geometric midpoint 1e-3
  assert 3 <= sum(lr < 1e-3 for lr in lrs) <= 9
  dropouts = [p["model.dropout"] for p in points]
  assert all(0 <= d <= 0.3 and float(f"{d:.2g}") == d for d in dropouts)
  assert {p["model.embed_dim"] for p in points} == {32, 64}
  assert all(type(p["model.embed_dim"]) is int for p in points)


def test_random_over_a_too_small_space_is_an_error():
  block = spec.Random(n=3, seed=0, params={"data.tokenizer": spec.Choice(["char", "byte"])})
  with pytest.raises(spec.SweepError, match="only 2 distinct points"):
    spec.expand(_sweep(axes=[block]))


@pytest.mark.parametrize("kw,match", [
    ({"fixed": {"train.bogus": 1}}, "unknown config key 'train.bogus'"),
    ({"fixed": {"model": 3}}, "unknown config key 'model'"),
    ({"axes": [spec.Grid({"optimizer.lr": [1e-3]})]}, "unknown config key 'optimizer.lr'"),
    ({"axes": [spec.Grid({"train.num_steps": [10, "many"]})]}, "train.num_steps='many'"),
    ({"axes": [spec.Random(2, 0, {"model.embed_dim": spec.Uniform(8.0, 9.0)})]},
     "model.embed_dim=8.0"),
    ({"fixed": {"train.seed": 1}, "seeds": [1, 2]}, "train.seed"),
    ({"fixed": {"model.embed_dim": 32}, "axes": [spec.Grid({"model.embed_dim": [64]})]},
     "model.embed_dim is set twice"),
    ({"seeds": [0, 0]}, "repeated trials"),
    ({"name": "a/b"}, "sweep name"),
    ({"metric": "accuracy"}, "metric 'accuracy'"),
    ({"base_config": "configs/missing.py"}, "no such file"),
    ({"axes": [spec.Random(2, 0, {"optimizer.learning_rate": spec.LogUniform(0.0, 1.0)})]},
     "0 < low < high"),
])
def test_bad_sweeps_are_one_error_before_anything_runs(kw, match):
  with pytest.raises(spec.SweepError, match=re.escape(match)):
    spec.expand(_sweep(**kw))


def test_names_read_like_the_overrides_and_stay_filesystem_safe():
  keys = ["optimizer.learning_rate", "model.embed_dim", "train.seed"]
  labels = spec.labels(keys)
  assert spec.trial_name(dict(zip(keys, [0.001, 64, 0])), labels) == "lr0.001_embed_dim64_seed0"
  assert spec.trial_name({"optimizer.learning_rate": 3e-5}, labels) == "lr3e-05"
  # two leaves with one name fall back to the full keys
  assert spec.labels(["a.size", "b.size", "c.x"]) == {"a.size": "a-size", "b.size": "b-size",
                                                      "c.x": "x"}
  odd = spec.trial_name({"data.path": "/data/my file.txt"}, {"data.path": "path"})
  assert re.fullmatch(r"path-data-my-file\.txt_[0-9a-f]{8}", odd)
  other = spec.trial_name({"data.path": "/data/my:file.txt"}, {"data.path": "path"})
  assert other != odd  # same sanitised text, different hash
  long = spec.trial_name({"data.path": "x" * 300}, {"data.path": "path"})
  assert len(long) == spec.MAX_NAME_LENGTH and re.search(r"_[0-9a-f]{8}$", long)
  assert spec.trial_name({}, {}) == "base"


def test_experiment_sweeps_expand_and_every_trial_config_splits():
  from treadle.train import config as config_lib  # imports jax: only this test needs it
  files = sorted((REPO / "experiments").glob("*/sweep.py"))
  assert files
  for path in files:
    sweep = spec.load(path)
    base = str(REPO / sweep.base_config)
    trials = spec.expand(dataclasses.replace(sweep, base_config=base))
    assert trials, path
    for trial in trials:
      cfg = spec.load_config(base)
      for key, value in trial.overrides.items():
        spec.check_override(cfg, key, value)
      config_lib.split(cfg)  # the typed configs validate shapes and values


def _write(tmp_path: pathlib.Path, body: str) -> pathlib.Path:
  path = tmp_path / "sweep.py"
  path.write_text("from treadle.sweep import spec\n\ndef get_sweep():\n  return " + body + "\n")
  return path


def test_cli_dry_run_lists_each_trial_command_and_writes_nothing(tmp_path, text_file):
  path = _write(tmp_path, f"spec.Sweep(name='d', base_config='configs/tiny.py', "
                f"fixed={{'data.path': {str(text_file)!r}}}, "
                "axes=[spec.Grid({'optimizer.learning_rate': [1e-3, 2e-3]})], seeds=[4])")
  root = tmp_path / "root"
  out = run_cli("treadle.sweep.cli", path, "--dry_run", "--root", root).stdout.splitlines()
  assert out[0] == f"d: 2 trials under {root}"
  assert [line.split("\t")[1] for line in out[1:]] == ["lr0.001_seed4", "lr0.002_seed4"]
  assert all(line.split("\t")[2] == "to run" for line in out[1:])
  assert (f"--workdir {root}/trials/lr0.002_seed4 --config.data.path={text_file} "
          "--config.optimizer.learning_rate=0.002 --config.train.seed=4") in out[2]
  only = run_cli("treadle.sweep.cli", path, "--dry_run", "--root", root, "--only", "0.002").stdout
  assert "lr0.002_seed4" in only and "lr0.001" not in only
  assert not root.exists()


@pytest.mark.parametrize("body,args,match", [
    ("spec.Sweep(name='e', base_config='configs/tiny.py', fixed={'train.bogus': 1})", [],
     "unknown config key 'train.bogus'"),
    ("1 / 0", [], "ZeroDivisionError"),
    ("spec.Sweep(name='e', base_config='configs/tiny.py')", ["--only", "nomatch"],
     "matches none"),
    ("spec.Sweep(name='e', base_config='configs/tiny.py')", ["--parallel", "0"], "--parallel"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, body, args, match):
  root = tmp_path / "root"
  proc = run_cli("treadle.sweep.cli", _write(tmp_path, body), "--root", root, *args, check=False)
  assert proc.returncode == 2, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and match in errors[0], proc.stderr
  assert not root.exists()
