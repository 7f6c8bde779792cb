"""Metrics sinks: DIR/metrics.jsonl (one JSON object per line), TensorBoard events and,
with train.wandb_project, Weights & Biases."""
import importlib.util
import json
import logging
import math
import pathlib
import uuid

from tensorboardX import SummaryWriter

from treadle.common import fileio

FILENAME = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"  # a resumed run keeps logging to the same W&B run

log = logging.getLogger(__name__)


class MetricsWriter:
  """Appends metrics; a no-op on every process but 0 in multi-process runs."""

  def __init__(self, workdir, enabled: bool = True, wandb_project: str = "",
               config: dict | None = None):
    self.enabled, self._wandb = enabled, None
    if not enabled:
      return
    workdir = pathlib.Path(workdir)
    if wandb_project:  # first: a missing package fails before any file is opened
      self._wandb = _wandb_run(workdir, wandb_project, config or {})
    self._file = open(workdir / FILENAME, "a", encoding="utf-8")
    self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, **values) -> None:
    if not self.enabled:
      return
    clean = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
    self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._file.flush()
    scalars = {k: v for k, v in clean.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, int(step))
    if self._wandb is not None and scalars:
      self._wandb.log(scalars, step=int(step))

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()
      if self._wandb is not None:
        self._wandb.finish()


def _wandb_run(workdir: pathlib.Path, project: str, config: dict):
  """A W&B run for this workdir (resumed with it), holding the resolved config. WANDB_MODE=
  offline logs without a network (`wandb sync DIR/wandb/offline-run-*` uploads later)."""
  check_wandb(project)
  import wandb  # optional (checked above): only runs that log to W&B need it
  id_file = workdir / WANDB_ID_FILE
  run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
  fileio.atomic_write(id_file, run_id)
  # console="off": W&B leaves stdout/stderr alone (the log lines are ours, and its stream
  # wrappers would hide whether stderr is a terminal)
  return wandb.init(project=project, id=run_id, resume="allow", name=workdir.name,
                    dir=str(workdir), config=config, settings=wandb.Settings(console="off"))


def check_wandb(project: str) -> None:
  """A one-line ValueError when train.wandb_project is set but wandb is not installed."""
  if project and importlib.util.find_spec("wandb") is None:
    raise ValueError(f"train.wandb_project={project!r} needs the wandb package: "
                     "pip install 'treadle[wandb]'")


def _complete_rows(path: pathlib.Path) -> list[dict]:
  """Every whole line; a last line still being written (or cut by a kill) is left out.

  A whole line that is not a row (a file damaged or edited by hand) is skipped with a warning
  naming it, so that plots, the sweep report and resume read the rest. Resume rewrites the
  file without it (`drop_after`): nothing in it could be read back anyway."""
  text = path.read_text(encoding="utf-8", errors="replace")
  complete = text if text.endswith("\n") else text[:text.rfind("\n") + 1]
  rows = []
  for number, line in enumerate(complete.split("\n")[:-1], 1):  # numbered as editors do
    if line.strip() and (row := _row(path, number, line)) is not None:
      rows.append(row)
  return rows


def _row(path: pathlib.Path, number: int, line: str) -> dict | None:
  try:
    row = json.loads(line)
  except ValueError as e:
    reason = f"not JSON ({e})"
  else:
    if isinstance(row, dict) and isinstance(row.get("step"), int):
      return row
    reason = "not an object with an integer step"
  log.warning("%s line %d: %s; skipped", path, number, reason)
  return None


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
