"""Metrics sinks: DIR/metrics.jsonl (one JSON object per line) and TensorBoard events."""
import json
import math
import pathlib

from tensorboardX import SummaryWriter

from treadle.train import fileio

FILENAME = "metrics.jsonl"


class MetricsWriter:
  """Appends metrics; a no-op on every process but 0 in multi-process runs."""

  def __init__(self, workdir, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    workdir = pathlib.Path(workdir)
    self._file = open(workdir / FILENAME, "a", encoding="utf-8")
    self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, **values) -> None:
    if not self.enabled:
      return
    clean = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
    self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._file.flush()
    for k, v in clean.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()


def _complete_rows(path: pathlib.Path) -> list[dict]:
  """Every whole line; a last line still being written (or cut by a kill) is left out."""
  text = path.read_text(encoding="utf-8")
  complete = text if text.endswith("\n") else text[:text.rfind("\n") + 1]
  return [json.loads(line) for line in complete.splitlines() if line.strip()]


def read(workdir) -> list[dict]:
  """The rows of DIR/metrics.jsonl, each step once (see `each_step_once`)."""
  path = pathlib.Path(workdir) / FILENAME
  if not path.exists():
    return []
  return each_step_once(_complete_rows(path))


def each_step_once(rows: list[dict]) -> list[dict]:
  """Rows as a single uninterrupted run writes them: each step's metrics once.

  The trainer drops rows past the restored step when it resumes (`drop_after`), but a file
  written by an older version after a kill holds the replayed steps twice. A row that goes
  back in steps, or repeats the keys of a row of its own step, comes from a resumed process:
  it replaces the earlier rows past its step and the one it repeats (resume is exact)."""
  out: list[dict] = []
  for row in rows:
    step = row["step"]
    if out and out[-1]["step"] >= step:
      out = [r for r in out if r["step"] < step or (r["step"] == step and r.keys() != row.keys())]
    out.append(row)
  return out


def _kept_on_resume(row: dict, step: int) -> bool:
  # the end-of-run test row is written again when the resumed run ends
  return row["step"] < step or (row["step"] == step and "test_loss" not in row)


def drop_after(workdir, step: int) -> int:
  """On resume from `step`: removes the rows past it, its test row and a torn last line,
  atomically, so the rows the resumed process writes again appear once. Returns the number
  of rows dropped."""
  path = pathlib.Path(workdir) / FILENAME
  if not path.exists():
    return 0
  text = path.read_text(encoding="utf-8")
  rows = _complete_rows(path)
  kept = [r for r in rows if _kept_on_resume(r, step)]
  if len(kept) == len(rows) and text.endswith("\n") or not text:
    return 0
  fileio.atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
  return len(rows) - len(kept)
