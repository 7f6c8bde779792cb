"""Runs trials as treadle-train processes: skips finished ones, resumes the rest, one owner each.

Under the sweep root (default runs/sweeps/NAME):
  trials/TRIAL/       the trial's treadle-train workdir (resumed by rerunning its command)
  logs/TRIAL.log      its stdout and stderr, every attempt appended
  status/TRIAL.json   the runner's record: state, command, attempts (start, end, exit code), error
  locks/TRIAL.lock    flock'd while a process trains the trial
"""
import dataclasses
import json
import os
import pathlib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable

from treadle.sweep import spec
from treadle.common import fileio
from treadle.train import interrupts
from treadle.train import metrics

POLL_SECONDS = 0.2


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a sweep keeps its files."""
  root: pathlib.Path

  def workdir(self, name: str) -> pathlib.Path:
    return self.root / "trials" / name

  def log(self, name: str) -> pathlib.Path:
    return self.root / "logs" / f"{name}.log"

  def status(self, name: str) -> pathlib.Path:
    return self.root / "status" / f"{name}.json"

  def lock(self, name: str) -> pathlib.Path:
    return self.root / "locks" / f"{name}.lock"


def command(sweep: spec.Sweep, trial: spec.Trial, layout: Layout) -> list[str]:
  """The trial's treadle-train command; rerunning it resumes the trial."""
  return [sys.executable, "-m", "treadle.train.main", "--config", sweep.base_config,
          "--workdir", str(layout.workdir(trial.name)),
          *(f"--config.{k}={spec.format_value(v)}" for k, v in trial.overrides.items())]


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """metrics.jsonl rows; a line still being written by a running trial is left out."""
  return metrics.read(workdir)


def read_status(layout: Layout, name: str) -> dict[str, Any] | None:
  path = layout.status(name)
  return json.loads(path.read_text()) if path.exists() else None


def write_status(layout: Layout, name: str, status: dict[str, Any]) -> None:
  path = layout.status(name)
  path.parent.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write(path, json.dumps(status, indent=1))


def is_finished(rows: list[dict], status: dict | None, argv: list[str]) -> bool:
  """treadle-train writes the test loss last, only when a run completes; if this runner
  tracked the trial, it must also have finished with this very command (same overrides)."""
  if not rows or "test_loss" not in rows[-1]:
    return False
  return status is None or (status["state"] == "finished" and status["argv"][1:] == argv[1:])


def wall_time(status: dict | None) -> float:
  """Seconds spent training the trial, summed over its finished attempts."""
  attempts = (status or {}).get("attempts", [])
  return sum(a["end"] - a["start"] for a in attempts if a.get("end"))


def is_alive(status: dict) -> bool:
  """Whether a 'running' record's processes still exist (another host: assume they do)."""
  attempt = status["attempts"][-1]
  if attempt["host"] != socket.gethostname():
    return True
  return any(pid_alive(attempt.get(key)) for key in ("pid", "sweep_pid"))


def pid_alive(pid: int | None) -> bool:
  """A process that exists and is not a zombie (an orphaned trial nobody has reaped yet)."""
  if not pid:
    return False
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False
  except OSError:  # no /proc: ask the kernel
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      pass
    return True


@dataclasses.dataclass
class _Active:
  trial: spec.Trial
  proc: subprocess.Popen
  lock_fd: int
  status: dict[str, Any]
  log_offset: int


class _Forwarder:
  """Passes the runner's SIGTERM/SIGINT on: the first as SIGTERM (trials checkpoint and exit
  75), a second as SIGKILL (a trial stuck in native code never sees the first)."""

  def __init__(self, stop: interrupts.StopSignal):
    self.stop, self.forwarded = stop, 0

  def __call__(self, active: list["_Active"], say: Callable[[str], None]) -> None:
    if self.stop.count > self.forwarded:
      self.forwarded = self.stop.count
      sig = signal.SIGTERM if self.stop.count == 1 else signal.SIGKILL
      say(f"{self.stop.received}: stopping; {sig.name} to the running trials")
      for a in active:
        a.proc.send_signal(sig)


def run(sweep: spec.Sweep, trials: list[spec.Trial], layout: Layout, parallel: int = 1,
        say: Callable[[str], None] = print) -> dict[str, str]:
  """Trains the trials not finished, `parallel` at a time; returns name -> outcome, one of
  finished, failed, interrupted, already finished, locked (another process owns it),
  not started (stopped by a signal first)."""
  queue, active, outcomes = list(trials), [], {}
  stop = interrupts.StopSignal()  # start nothing new; pass the signal on to the trials
  forward = _Forwarder(stop)

  position = {t.name: i + 1 for i, t in enumerate(trials)}

  def tag(trial: spec.Trial) -> str:
    return f"[{sweep.name} {position[trial.name]}/{len(trials)}] {trial.name}"

  try:
    while active or (queue and not stop.received):
      while queue and len(active) < parallel and not stop.received:
        trial = queue.pop(0)
        started = _start(sweep, trial, layout)
        if isinstance(started, str):
          outcomes[trial.name] = started
          say(f"{tag(trial)}: {started}, skipped")
        else:
          active.append(started)
          say(f"{tag(trial)}: started (attempt {len(started.status['attempts'])}), "
              f"log {layout.log(trial.name)}")
      forward(active, say)
      for a in [a for a in active if a.proc.poll() is not None]:
        active.remove(a)
        outcomes[a.trial.name] = _finish(layout, a, bool(stop.received))
        say(f"{tag(a.trial)}: {_describe(a.status)}")
      if active:
        time.sleep(POLL_SECONDS)
  finally:
    stop.restore()
  outcomes.update({t.name: "not started" for t in queue})
  return outcomes


def _describe(status: dict) -> str:
  seconds = status["attempts"][-1]["end"] - status["attempts"][-1]["start"]
  text = f"{status['state']} after {seconds:.0f} s"
  return f"{text}: {status['error']}" if status.get("error") else text


def _start(sweep: spec.Sweep, trial: spec.Trial, layout: Layout) -> _Active | str:
  """Locks and launches the trial, or says why not."""
  lock_fd = fileio.try_lock(layout.lock(trial.name))
  if lock_fd is None:
    return "locked"
  argv = command(sweep, trial, layout)
  status = read_status(layout, trial.name)
  # checked under the lock: another process may have finished it a moment ago
  if is_finished(read_metrics(layout.workdir(trial.name)), status, argv):
    os.close(lock_fd)
    return "already finished"
  status = status or {"trial": trial.name, "overrides": trial.overrides, "attempts": []}
  status.update(state="running", argv=argv, error=None)
  log_path = layout.log(trial.name)
  log_path.parent.mkdir(parents=True, exist_ok=True)
  with open(log_path, "ab") as log:
    offset = log.tell()
    log.write(f"### attempt {len(status['attempts']) + 1} at {time.ctime()}: "
              f"{shlex.join(argv)}\n".encode())
    log.flush()
    # the child inherits the lock: a trial outliving a killed sweep process stays owned
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, pass_fds=(lock_fd,))
  status["attempts"].append({"start": time.time(), "host": socket.gethostname(),
                             "sweep_pid": os.getpid(), "pid": proc.pid})
  write_status(layout, trial.name, status)
  return _Active(trial, proc, lock_fd, status, offset)


def _finish(layout: Layout, active: _Active, stopping: bool) -> str:
  """Records the exit of a trial's process and releases its lock."""
  code = active.proc.returncode
  status = active.status
  status["attempts"][-1].update(end=time.time(), returncode=code)
  if code == 0:
    status["state"] = "finished"
  elif code == interrupts.EXIT_CODE or (code < 0 and stopping):
    status["state"] = "interrupted"
  else:
    status["state"] = "failed"
    status["error"] = _error_line(layout.log(active.trial.name), active.log_offset, code)
  write_status(layout, active.trial.name, status)
  os.close(active.lock_fd)
  return status["state"]


def _error_line(log_path: pathlib.Path, offset: int, code: int) -> str:
  """treadle-train's one-line `error: ...`, else the last line it printed."""
  with open(log_path, "rb") as f:
    f.seek(offset)
    lines = [l.strip() for l in f.read().decode(errors="replace").splitlines()[1:] if l.strip()]
  errors = [l for l in lines if l.startswith("error:")]
  if code >= 0:
    return f"exit {code}: " + (errors[-1] if errors else (lines[-1] if lines else "no output"))
  # an abort says why in a fatal log line (glog: F<mmdd> ...) before the signal
  fatal = [l for l in lines if re.match(r"F\d{4} ", l)]
  reason = f"killed by {signal.Signals(-code).name}"
  return f"exit {code}: {reason}" + (f": {fatal[-1][:300]}" if fatal else "")
