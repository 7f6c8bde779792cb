"""What an operator sees while a run trains: a progress bar on a terminal, plain log lines
elsewhere (SLURM, nohup, CI), and an optional jax.profiler trace of a window of steps."""
import logging
import pathlib
import sys
import time

import jax
import tqdm

log = logging.getLogger("treadle")


def shown(metrics: dict) -> dict:
  """The metrics a log line shows: all but the per-expert loads ("val_expert_load/layer0/e3":
  dozens of them), which go to metrics.jsonl and TensorBoard."""
  return {k: v for k, v in metrics.items() if "expert_load/" not in k}


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Display:
  """A tqdm bar when stderr is a terminal; otherwise one plain line per logged step (step,
  loss, learning rate, throughput, ETA) and one per evaluation. Silent on processes but 0."""

  def __init__(self, num_steps: int, start: int, enabled: bool, interactive: bool | None = None):
    self.num_steps, self.enabled = num_steps, enabled
    self.interactive = sys.stderr.isatty() if interactive is None else interactive
    self.bar = tqdm.tqdm(total=num_steps, initial=start, dynamic_ncols=True,
                         disable=not (enabled and self.interactive))
    self._last = (start, time.perf_counter())

  def advance(self) -> None:
    self.bar.update(1)

  def train_line(self, step: int, loss: float, learning_rate: float, rates: dict) -> None:
    """`rates`: the throughput measurement ({unit}_per_second, maybe mfu)."""
    if not self.enabled or self.interactive:
      return
    last_step, last_time = self._last
    now = time.perf_counter()
    self._last = (step, now)
    per_step = (now - last_time) / max(step - last_step, 1)  # evals and saves included
    speed = "  ".join(f"{k.replace('_per_second', '/s')} {v:,.0f}" for k, v in rates.items()
                      if k.endswith("_per_second"))
    log.info("step %d/%d  loss %.4f  lr %.3g  %s  ETA %s", step, self.num_steps, loss,
             learning_rate, speed, _duration(per_step * (self.num_steps - step)))

  def eval_line(self, step: int, metrics: dict, best: float | None) -> None:
    """`metrics`: an evaluation's row (val_*, eval/NAME/*); `best` None: the evaluation of
    the starting model, before any step."""
    self.bar.set_postfix(val_loss=f"{metrics['val_loss']:.4f}")
    if not self.enabled or self.interactive:
      return
    values = "  ".join(f"{k.replace('_', ' ', 1) if k.startswith('val_') else k} {v:.4f}"
                       for k, v in shown(metrics).items())
    note = "before training" if best is None else f"best val loss {best:.4f}"
    log.info("step %d/%d  %s  (%s)", step, self.num_steps, values, note)

  def close(self) -> None:
    self.bar.close()


class ProfileWindow:
  """train.profile_steps "A:B": a jax.profiler trace of steps A..B-1 into DIR/profile
  (TensorBoard's profile plugin or Perfetto read it). A resumed run traces what is left."""

  def __init__(self, window: tuple[int, int] | None, directory: pathlib.Path):
    self.window, self.directory, self.active = window, directory, False

  def before_step(self, step: int) -> None:
    if self.window and not self.active and self.window[0] <= step < self.window[1]:
      self.directory.mkdir(parents=True, exist_ok=True)
      # the .xplane.pb is for TensorBoard, the .trace.json.gz for Perfetto
      jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
      self.active = True
      log.info("profiling steps %d..%d into %s", step, self.window[1] - 1, self.directory)

  def after_step(self, step: int, outputs) -> None:
    if self.active and step >= self.window[1] - 1:
      self.stop(outputs)

  def stop(self, outputs=None) -> None:
    """Waits for the traced work to finish, then writes the trace."""
    if self.active:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active = False
