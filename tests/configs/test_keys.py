"""Each config key is declared once (configs/base.py): its checks, the keys a resume may
change and the reference docs/config-keys.md all come from that declaration."""
import dataclasses
import pathlib

import pytest

from treadle.configs import base
from treadle.configs import keys
from treadle.configs import reference
from treadle.data import tokenizers
from treadle.model import gpt
from treadle.train import config as config_lib
from treadle.train import mesh as mesh_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
DECLARED = {(task, k): v for task in base.TASKS for k, v in base.declared(task).items()}
# a value of the key's type that its check refuses (the first candidate that fails)
CANDIDATES = {int: (0, -1), float: (0.0, -1.0, 1.0, 0.5), str: ("no-such-choice",)}


def _config(task: str, key: str, value) -> dict:
  cfg = base.get_config(task).to_dict()
  section, name = key.split(".")
  cfg[section][name] = value
  return cfg


def _refused(decl: keys.Key):
  return next(v for v in CANDIDATES[decl.kind] if not decl.check.test(v))


@pytest.mark.parametrize("task,key", [tk for tk, v in DECLARED.items()
                                      if v.check and "." in tk[1]])
def test_every_declared_check_refuses_naming_the_key(task, key):
  value = _refused(DECLARED[task, key])
  with pytest.raises(ValueError) as e:
    config_lib.split(_config(task, key, value))
  assert str(e.value).startswith(f"{key}={value!r} ") and "\n" not in str(e.value)


@pytest.mark.parametrize("key,value,words", [
    ("model.embed_dim", 0, "must be > 0"), ("model.embed_dim", 1.5, "must be an integer"),
    ("model.num_heads", True, "must be an integer"), ("model.qk_norm", 1, "must be true or false"),
    ("optimizer.beta1", float("nan"), "must be a finite number"),
    ("optimizer.muon_momentum", 1.0, "must be in [0, 1)"),
    ("data.seq_len", 0, "must be > 0"), ("train.matmul_precision", "low", "is not one of")])
def test_a_refused_value_is_one_line_naming_the_key(key, value, words):
  with pytest.raises(ValueError) as e:
    config_lib.split(_config("lm", key, value))
  assert str(e.value).startswith(f"{key}={value!r} {words}")


def test_a_check_comes_from_its_declaration(monkeypatch):
  cfg = _config("lm", "train.seed", 0)
  config_lib.split(cfg)  # any seed is allowed ...
  seed = next(k for k in base.TRAIN if k.name == "seed")
  monkeypatch.setitem(base.SECTIONS, "train", (base.SECTIONS["train"][0], dict.fromkeys(
      base.TASKS, tuple(dataclasses.replace(k, check=keys.POSITIVE) if k is seed else k
                        for k in base.TRAIN))))
  with pytest.raises(ValueError, match=r"^train\.seed=0 must be > 0$"):  # ... until declared
    config_lib.split(cfg)


def test_resumable_keys_are_the_declared_ones():
  declared = {k for (_, k), v in DECLARED.items() if v.resume}
  assert config_lib.RESUMABLE_KEYS == declared
  assert {"train.num_steps", "mesh.data", "data.cache_dir"} <= declared
  assert not {"train.seed", "model.embed_dim", "optimizer.learning_rate"} & declared
  refused, allowed = config_lib.differences(
      config_lib.split(base.get_config()), config_lib.split(_config("lm", "mesh.fsdp", 2)))
  assert (refused, allowed) == ([], ["mesh.fsdp"])


def test_declared_choices_are_the_ones_the_code_dispatches_on():
  lm = base.declared("lm")
  assert lm["data.tokenizer"].check.choices == tokenizers.KINDS
  assert set(lm["mesh.rules"].check.choices) == set(mesh_lib.RULES)
  assert set(lm["model.compute_dtype"].check.choices) == set(gpt._DTYPES)
  assert set(lm["model.remat"].check.choices) == {"none", *gpt._REMAT_POLICIES}


def test_the_base_values_pass_their_own_checks():
  bad = [f"{task}:{k}" for (task, k), v in DECLARED.items() if v.problem(k, v.default)]
  assert not bad, bad


def test_the_committed_reference_is_the_generated_one():
  committed = (REPO / "docs" / "config-keys.md").read_text(encoding="utf-8")
  assert committed == reference.render(), (
      "docs/config-keys.md is stale: python -m treadle.configs.reference > docs/config-keys.md")
  for (_, key), decl in DECLARED.items():
    assert f"| `{key}` | `{decl.default!r}` |" in committed


@pytest.mark.parametrize("task,key", [tk for tk, v in DECLARED.items()
                                      if v.check and "." in tk[1]])
def test_a_dataclass_built_without_split_holds_the_same_rules(task, key):
  # notebooks, tests and the HF importer build these directly
  section, name = key.split(".")
  typed = getattr(config_lib.split(base.get_config(task)), section)
  value = _refused(DECLARED[task, key])
  with pytest.raises(ValueError) as e:
    dataclasses.replace(typed, **{name: value})
  assert str(e.value).startswith(f"{key}={value!r} ")
