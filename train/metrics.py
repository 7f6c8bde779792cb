"""Metrics sinks: DIR/metrics.jsonl (one JSON object per line) and TensorBoard events."""
import json
import math
import pathlib

from tensorboardX import SummaryWriter

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


def read(workdir) -> list[dict]:
  """The rows of DIR/metrics.jsonl; a last line still being written is left out."""
  path = pathlib.Path(workdir) / FILENAME
  if not path.exists():
    return []
  text = path.read_text()
  complete = text if text.endswith("\n") else text[:text.rfind("\n") + 1]
  return [json.loads(line) for line in complete.splitlines() if line.strip()]
