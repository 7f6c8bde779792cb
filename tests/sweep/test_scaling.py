"""treadle-scaling on synthetic runs of a known law: approach 3 recovers its parameters and
covers them with its bootstrap intervals, approach 2 agrees with it; the frontier is the
minimum at fixed compute; bad tables are one line, exit 2; sweep directories are read; and
spec.IsoFLOP expands into shapes and step counts that spend each budget."""
import json
import re

import numpy as np
import pytest

from treadle.sweep import scaling
from treadle.sweep import scaling_data
from treadle.sweep import spec
from tests.conftest import REPO, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Hoffmann et al.'s fit: a = beta / (alpha + beta) = 0.4516
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TRUE_A = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])


def _law(N, D):
  return TRUE["E"] + TRUE["A"] / N**TRUE["alpha"] + TRUE["B"] / D**TRUE["beta"]


def _true_N_opt(C):
  G = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (1 / (TRUE["alpha"]
                                                                     + TRUE["beta"]))
  return G * (C / 6) ** TRUE_A


def _grid_runs(noise=0.005, seed=0):
  """8 x 8 runs, N in 1e7..1e10 and D in 1e9..1e12, losses with log-normal noise."""
  N, D = (g.ravel() for g in np.meshgrid(np.logspace(7, 10, 8), np.logspace(9, 12, 8)))
  return N, D, _law(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, N.shape))


def _isoflop_runs(seed=0):
  """9 sizes around the optimum of each of 4 budgets (shifted up to 0.2 decades)."""
  rng = np.random.default_rng(seed)
  N = np.concatenate([_true_N_opt(C) * 10**(np.linspace(-0.8, 0.8, 9) + rng.uniform(-0.2, 0.2))
                      for C in (1e18, 1e19, 1e20, 1e21)])
  D = np.repeat([1e18, 1e19, 1e20, 1e21], 9) / (6 * N)
  return N, D, _law(N, D) * np.exp(rng.normal(0, 0.002, N.shape))


@pytest.fixture(scope="module")
def fitted():
  """The grid runs plus 3 diverged ones (loss 10), fitted leaving out the 3 highest."""
  N, D, L = _grid_runs()
  N, D = np.append(N, [1e8, 1e9, 3e9]), np.append(D, [1e10, 1e10, 1e11])
  L = np.append(L, [10.0] * 3)
  return scaling.fit(N, D, L, exclude_highest=3, bootstrap=40, seed=0)


def test_fit_recovers_the_parameters_of_noisy_synthetic_runs(fitted):
  assert fitted.n == 64
  for name, tolerance in (("alpha", 0.01), ("beta", 0.01), ("E", 0.03)):
    assert abs(getattr(fitted, name) - TRUE[name]) < tolerance, (name, fitted)
  for name in ("A", "B"):  # A, B are the loosely determined ones (Epoch's A: 285..744)
    assert abs(np.log(getattr(fitted, name) / TRUE[name])) < 0.25, (name, fitted)
  assert fitted.a == pytest.approx(fitted.beta / (fitted.alpha + fitted.beta))
  assert fitted.a + fitted.b == pytest.approx(1.0)
  assert abs(fitted.a - TRUE_A) < 0.01


def test_bootstrap_intervals_cover_the_truth_and_the_estimate(fitted):
  assert set(fitted.ci) == set(scaling.NAMES)
  for name in ("E", "alpha", "beta", "a"):
    low, high = fitted.ci[name]
    truth = TRUE_A if name == "a" else TRUE[name]
    assert low < getattr(fitted, name) < high and low < truth < high, (name, low, high)
  assert fitted.ci["alpha"][1] - fitted.ci["alpha"][0] < 0.05  # informative, not everything


def test_kept_drops_exactly_the_k_highest_losses():
  loss = np.array([3.0, 9.0, 2.0, 9.0, 1.0, 5.0, 4.0])
  assert scaling_data.kept(loss, 0).tolist() == list(range(7))
  assert scaling_data.kept(loss, 2).tolist() == [0, 2, 4, 5, 6]
  with pytest.raises(ValueError, match="3 runs after leaving out the 4 highest: fewer than"):
    scaling_data.kept(loss, 4)
  with pytest.raises(ValueError, match="need 0 <= K < 7"):
    scaling_data.kept(loss, 7)


def test_frontier_is_the_minimum_of_the_law_at_fixed_compute():
  fit = scaling.Fit(n=0, **TRUE)
  for C in (1e18, 1e22):
    N_opt, D_opt = fit.optimal(C)
    assert 6 * N_opt * D_opt == pytest.approx(C)
    N = N_opt * np.logspace(-1, 1, 2001)
    best = N[np.argmin(fit.loss(N, C / (6 * N)))]
    assert best == pytest.approx(N_opt, rel=2e-3)


def test_isoflop_agrees_with_the_parametric_fit_and_the_truth():
  N, D, L = _isoflop_runs()
  iso, fit = scaling.isoflop(N, D, L), scaling.fit(N, D, L)
  assert [b.n for b in iso.budgets] == [9, 9, 9, 9]
  assert [b.C for b in iso.budgets] == pytest.approx([1e18, 1e19, 1e20, 1e21])
  for budget in iso.budgets:
    assert budget.inside and budget.N_opt == pytest.approx(_true_N_opt(budget.C), rel=0.1)
  assert abs(iso.a - fit.a) < 0.01 and abs(iso.a - TRUE_A) < 0.01
  assert iso.a + iso.b == pytest.approx(1.0)


def test_isoflop_leaves_out_budgets_without_a_minimum_and_needs_two():
  N, D, L = _isoflop_runs()
  two_sizes = np.r_[0:18, 18:20, 27:36]  # the third budget with 2 runs left (unfinished)
  concave = np.r_[L[:9], 20 - L[9:18], L[18:]]
  for runs, losses, reason in ((two_sizes, L[two_sizes], r"budget C=1e\+20: 2 model size"),
                               (np.arange(36), concave, r"budget C=1e\+19: no minimum")):
    result = scaling.isoflop(N[runs], D[runs], losses)
    assert len(result.budgets) == 3 and len(result.left_out) == 1
    assert re.fullmatch(reason + ".*", result.left_out[0]), result.left_out
    assert abs(result.a - TRUE_A) < 0.01
    assert all(b.inside for b in result.budgets)
  with pytest.raises(ValueError, match=r"^1 compute budget\(s\) with a minimum .*needs 2$"):
    scaling.isoflop(N[:9], D[:9], L[:9])
  with pytest.raises(ValueError, match=r"^1 compute budget.*left out: budget C=1e\+19: 2 model"):
    scaling.isoflop(N[:11], D[:11], L[:11])


def test_budget_groups_split_at_gaps_in_compute():
  C = np.array([1.0, 2.9, 1.04, 3.0, 0.97, 3.1, 10.0])
  assert [g.tolist() for g in scaling.budget_groups(C)] == [[4, 0, 2], [1, 3, 5], [6]]


def _table(path, rows, header="params,tokens,loss,note"):
  path.write_text(header + "\n" + "".join(",".join(map(str, r)) + ",x\n" for r in rows))
  return path


def test_cli_fit_prints_the_json_fields_and_writes_the_plot(tmp_path):
  N, D, L = _grid_runs()
  table = _table(tmp_path / "runs.csv", zip(N, D, L))
  proc = run_cli("treadle.sweep.scaling_cli", "fit", table, "--json", "--bootstrap", 10,
                 "--starts", 10)
  result = json.loads(proc.stdout)
  assert list(result) == ["E", "A", "B", "alpha", "beta", "a", "b", "ci", "n"]
  assert result["n"] == 64 and abs(result["alpha"] - TRUE["alpha"]) < 0.01
  assert result["a"] == pytest.approx(result["beta"] / (result["alpha"] + result["beta"]))
  assert set(result["ci"]) == set(scaling.NAMES)
  assert all(low < result[k] < high for k, (low, high) in result["ci"].items())
  assert (tmp_path / "runs_fit.png").read_bytes().startswith(PNG_MAGIC)
  assert proc.stderr.strip() == f"wrote {tmp_path / 'runs_fit.png'}"


def test_cli_isoflop_prints_budgets_and_writes_the_plot(tmp_path):
  table = _table(tmp_path / "iso.csv", zip(*_isoflop_runs()))
  out = tmp_path / "plot.png"
  proc = run_cli("treadle.sweep.scaling_cli", "isoflop", table, "--json", "--out", out)
  result = json.loads(proc.stdout)
  assert abs(result["a"] - TRUE_A) < 0.01 and result["n"] == 36
  assert [b["n"] for b in result["budgets"]] == [9, 9, 9, 9]
  assert out.read_bytes().startswith(PNG_MAGIC)
  refused = run_cli("treadle.sweep.scaling_cli", "isoflop", table, "--bootstrap", 5,
                    check=False)
  assert refused.returncode == 2
  assert refused.stderr == "error: --bootstrap: only for treadle-scaling fit\n"


HEADER = "params,tokens,loss\n"


@pytest.mark.parametrize("text,args,message", [
    ("params,loss\n" + "1e8,3.0\n" * 6, [], r"no column tokens \(a table needs params, tokens,"),
    (HEADER + "1e8,1e9,3\n" * 5 + "1e8,0,3\n", [], "line 7: tokens=0 is not a positive"),
    (HEADER + "1e8,1e9,abc\n", [], "line 2: loss='abc' is not a number"),
    (HEADER + "1e8,1e9,3\n" * 4, [], "4 runs: fewer than the fit's 5 parameters"),
    (HEADER + "1e8,1e9,3\n" * 6, ["--exclude_highest", 2], "4 runs after leaving"),
    (HEADER + "1e8,1e9,3\n" * 6, ["--out", "/no/such/dir/f.png"], "no such directory '/no/"),
])
def test_cli_bad_tables_are_one_line_exit_2_and_write_nothing(tmp_path, text, args, message):
  table = tmp_path / "t.csv"
  table.write_text(text)
  proc = run_cli("treadle.sweep.scaling_cli", "fit", table, *args, check=False)
  assert proc.returncode == 2 and proc.stdout == ""
  assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
  assert re.search(message, proc.stderr), proc.stderr
  assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_tables_need_finite_values_and_rows(tmp_path):
  table = tmp_path / "t.csv"
  for text, message in (("params,tokens,loss\n1e8,1e9,3\n1e8,1e9,nan\n", "line 3: loss=nan is"),
                        ("params,tokens,loss\n1e8,-1e9,3\n", "line 2: tokens=-1e9 is not a pos"),
                        ("params,tokens,loss\n1e8,1e9\n", "line 2: loss=None is not a number"),
                        ("params,tokens,loss\n", "no rows")):
    table.write_text(text)
    with pytest.raises(ValueError, match=message):
      scaling_data.load(table)
  with pytest.raises(FileNotFoundError, match="no such file or directory"):
    scaling_data.load(tmp_path / "missing.csv")


def _tiny_N(width: int, depth: int) -> int:
  """Non-embedding parameters of configs/tiny.py's decoder (layernorm without bias, GELU MLP
  of 4x width, tied embeddings) by hand: per block 12 w^2 weights and 2 norm scales of w,
  and the final norm."""
  return depth * (12 * width**2 + 2 * width) + width


def _run_dir(path, width, depth, summary, val_losses):
  from treadle.train import config as config_lib  # imports jax
  cfg = spec.load_config(TINY)
  cfg.model.embed_dim, cfg.model.num_layers = width, depth
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config_lib.split(cfg).to_dict()))
  (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "val_loss": v}) + "\n"
                                              for s, v in val_losses))
  if summary:
    (path / "summary.json").write_text(json.dumps(summary))


def test_a_sweep_directory_gives_N_D_and_the_last_val_loss_of_finished_runs(tmp_path):
  trials = tmp_path / "root" / "trials"
  _run_dir(trials / "a", 32, 2, {"outcome": "completed", "step": 40}, [(20, 3.0), (40, 2.5)])
  _run_dir(trials / "b", 64, 4, {"outcome": "early_stopped", "step": 30}, [(30, 2.25)])
  _run_dir(trials / "c", 48, 2, {"outcome": "interrupted", "step": 10}, [(10, 3.5)])
  _run_dir(trials / "d", 48, 2, None, [(10, 3.5)])  # still training
  runs = scaling_data.load(tmp_path / "root")
  assert runs.params.tolist() == [_tiny_N(32, 2), _tiny_N(64, 4)]
  assert runs.tokens.tolist() == [40 * 8 * 32, 30 * 8 * 32]  # steps x batch x seq_len
  assert runs.loss.tolist() == [2.5, 2.25] and runs.skipped == ["c", "d"]
  assert scaling_data.load(trials).params.tolist() == runs.params.tolist()  # run dirs directly
  with pytest.raises(ValueError, match="no run directories"):
    scaling_data.load(tmp_path)


TINY = str(REPO / "configs" / "tiny.py")
BUDGETS = [1e11, 3e11, 1e12]
WIDTHS, DEPTHS = [16, 32, 48, 64, 96, 128], [2, 4]


def _isoflop_sweep(**kw):
  return spec.Sweep(**{"name": "iso", "base_config": TINY, "seeds": [0],
                       "axes": [spec.IsoFLOP(budgets=BUDGETS, widths=WIDTHS, depths=DEPTHS)],
                       **kw, "fixed": {"train.batch_size": 8, **kw.get("fixed", {})}})


def test_isoflop_spec_picks_shapes_and_steps_that_spend_each_budget():
  trials = spec.expand(_isoflop_sweep())
  per_budget = {b: set() for b in BUDGETS}
  for trial in trials:
    width, depth, steps = (trial.overrides[k] for k in spec.IsoFLOP.KEYS)
    compute = 6 * _tiny_N(width, depth) * steps * 8 * 32
    budget = min(BUDGETS, key=lambda b: abs(np.log(compute / b)))
    assert abs(compute / budget - 1) < 0.05, trial
    per_budget[budget].add((width, depth))
  for budget, shapes in per_budget.items():  # the rule by hand: >= 20 steps, 1..1000 tokens/N
    expected = {(w, d) for w in WIDTHS for d in DEPTHS
                if (s := round(budget / (6 * _tiny_N(w, d) * 256))) >= 20
                and 1 <= s * 256 / _tiny_N(w, d) <= 1000}
    assert shapes == expected and len(shapes) >= 3
  assert len(trials) == sum(map(len, per_budget.values()))
  assert (128, 2) not in per_budget[1e11] and (16, 2) not in per_budget[1e12]  # a choice made


@pytest.mark.parametrize("kw,message", [
    ({"axes": [spec.IsoFLOP(budgets=[1e11, 1.2e11], widths=WIDTHS, depths=DEPTHS)]},
     r"must be >= 1.5x apart"),
    ({"axes": [spec.IsoFLOP(budgets=[1e9], widths=WIDTHS, depths=DEPTHS)]},
     r"budget 1e\+09 keeps 2 shape\(s\), a parabola needs 3"),
    ({"axes": [spec.IsoFLOP(budgets=[1e11], widths=WIDTHS, depths=DEPTHS, min_steps=5)]},
     r"min_steps=5: >= 10"),
    ({"axes": [spec.IsoFLOP(budgets=[1e11], widths=[30], depths=[2])]},
     r"IsoFLOP: width 30, depth 2: .*divisible"),
    ({"axes": [spec.IsoFLOP(budgets=BUDGETS, widths=WIDTHS, depths=DEPTHS),
               spec.Grid({"model.mlp_ratio": [2, 4]})]}, r"model.mlp_ratio varies N or D"),
    ({"fixed": {"train.num_steps": 100}}, r"train.num_steps is set twice"),
])
def test_isoflop_spec_refuses_what_it_cannot_spend(kw, message):
  with pytest.raises(spec.SweepError, match=message):
    spec.expand(_isoflop_sweep(**kw))
