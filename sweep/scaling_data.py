"""The runs a scaling-law fit reads: a CSV table or a sweep directory, as (N, D, loss).

TABLE: a CSV with columns params, tokens, loss (others ignored), one run a row.
Sweep directory: ROOT/trials/*/ (a treadle-sweep root) or ROOT/*/ (run directories): each
finished language-model run gives N = its non-embedding parameters (train/perf.py), D = steps
x train.batch_size x data.seq_len tokens, loss = its last validation loss.
"""
import csv
import dataclasses
import json
import math
import pathlib

import numpy as np

COLUMNS = ("params", "tokens", "loss")
NUM_PARAMETERS = 5  # of the approach-3 fit: E, A, B, alpha, beta


@dataclasses.dataclass(frozen=True)
class Runs:
  params: np.ndarray   # N
  tokens: np.ndarray   # D
  loss: np.ndarray
  skipped: list[str]   # run directories left out (unfinished, or no validation loss)


def load(path: str | pathlib.Path) -> Runs:
  """A CSV table or a sweep directory; ValueError / FileNotFoundError (one line) if bad."""
  path = pathlib.Path(path)
  if path.is_dir():
    return from_sweep(path)
  if not path.is_file():
    raise FileNotFoundError(f"{str(path)!r}: no such file or directory")
  return from_csv(path)


def kept(loss: np.ndarray, exclude_highest: int) -> np.ndarray:
  """Indices of all but the exclude_highest highest losses; ValueError if too few remain."""
  if not 0 <= exclude_highest < len(loss):
    raise ValueError(f"--exclude_highest={exclude_highest}: need 0 <= K < {len(loss)} (runs)")
  kept = np.sort(np.argsort(loss, kind="stable")[:len(loss) - exclude_highest])
  if len(kept) < NUM_PARAMETERS:
    after = f" after leaving out the {exclude_highest} highest" if exclude_highest else ""
    raise ValueError(f"{len(kept)} runs{after}: fewer than the fit's {NUM_PARAMETERS} "
                     "parameters (E, A, B, alpha, beta)")
  return kept


def from_csv(path: pathlib.Path) -> Runs:
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{str(path)!r}: no column{'s' if len(missing) > 1 else ''} "
                       f"{', '.join(missing)} (a table needs params, tokens, loss)")
    values = [[_positive(path, reader.line_num, c, row[c]) for c in COLUMNS] for row in reader]
  if not values:
    raise ValueError(f"{str(path)!r}: no rows")
  params, tokens, loss = np.array(values).T
  return Runs(params, tokens, loss, [])


def _positive(path: pathlib.Path, line: int, column: str, text: str | None) -> float:
  try:
    value = float(text)
  except (TypeError, ValueError):
    raise ValueError(f"{str(path)!r} line {line}: {column}={text!r} is not a number") from None
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f"{str(path)!r} line {line}: {column}={text} is not a positive number")
  return value


def from_sweep(root: pathlib.Path) -> Runs:
  """Every finished run under root/trials (or root); the others are listed in `skipped`."""
  base = root / "trials" if (root / "trials").is_dir() else root
  workdirs = sorted(p for p in base.iterdir() if (p / "config.json").is_file())
  if not workdirs:
    raise ValueError(f"{str(root)!r}: no run directories (DIR/trials/*/config.json or "
                     "DIR/*/config.json)")
  rows, skipped = [], []
  for workdir in workdirs:
    row = _run(workdir)
    (rows.append(row) if row else skipped.append(workdir.name))
  if not rows:
    raise ValueError(f"{str(root)!r}: none of its {len(workdirs)} runs has finished with a "
                     "validation loss")
  params, tokens, loss = np.array(rows, dtype=float).T
  return Runs(params, tokens, loss, skipped)


def _run(workdir: pathlib.Path) -> tuple[float, float, float] | None:
  """(N, D, final val loss) of a finished run; None if it has not finished."""
  from treadle.train import config as config_lib  # noqa: PLC0415 (imports jax: sweeps only)
  from treadle.train import metrics  # noqa: PLC0415
  summary_path = workdir / "summary.json"
  if not summary_path.is_file():
    return None
  summary = json.loads(summary_path.read_text())
  val = [r["val_loss"] for r in metrics.read(workdir) if "val_loss" in r]
  if summary.get("outcome") == "interrupted" or not val:
    return None
  params, tokens_per_step = size(config_lib.from_json(workdir / "config.json"), workdir.name)
  return params, summary["step"] * tokens_per_step, val[-1]


def size(run, name: str) -> tuple[int, int]:
  """(non-embedding parameters, tokens per step) of a language-model RunConfig."""
  from treadle.train import perf  # noqa: PLC0415 (imports jax)
  if run.task != "lm":
    raise ValueError(f"{name}: task {run.task!r}; scaling fits read language models (task lm)")
  if run.model.vocab_size == 0 and not run.model.tie_embeddings:
    raise ValueError(f"{name}: model.vocab_size is 0 (the tokenizer's, known once trained) "
                     "and the output layer is untied, so N cannot count it: set model.vocab_size")
  return (perf.num_params(run.model, include_embeddings=False),
          run.train.batch_size * run.data.seq_len)
