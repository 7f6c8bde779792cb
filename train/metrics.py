"""Metrics sinks: DIR/metrics.jsonl (one JSON object per line), TensorBoard events and,
with train.wandb_project, Weights & Biases."""
import importlib.util
import json
import math
import pathlib
import uuid

from tensorboardX import SummaryWriter

from treadle.train import fileio

FILENAME = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"  # a resumed run keeps logging to the same W&B run


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


def read(workdir) -> list[dict]:
  """The rows of DIR/metrics.jsonl; a last line still being written is left out."""
  path = pathlib.Path(workdir) / FILENAME
  if not path.exists():
    return []
  text = path.read_text()
  complete = text if text.endswith("\n") else text[:text.rfind("\n") + 1]
  return [json.loads(line) for line in complete.splitlines() if line.strip()]
