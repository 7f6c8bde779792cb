"""A tiny trained run and treadle-serve processes on 127.0.0.1 for the serve tests."""
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import REPO, child_env, run_cli

_LISTENING = re.compile(r"serving .* on (http://127\.0\.0\.1:\d+)")
_STARTED: list["ServerProcess"] = []  # every server of this worker, for failure reports


class ServerProcess:
  """`python -m treadle.serve.main` on a free loopback port; its log kept for failures."""

  def __init__(self, workdir, *flags, timeout: float = 240, env: dict | None = None):
    env = child_env(**(env or {}))  # its own device layout
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "treadle.serve.main", f"--workdir={workdir}", "--port=0",
         *flags], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    self.log: list[str] = []
    self.flags, self.stopped = flags, False
    _STARTED.append(self)
    found = threading.Event()

    def drain():  # read the log to the end so the pipe never fills
      for line in self.proc.stderr:
        self.log.append(line)
        match = _LISTENING.search(line)
        if match:
          self.url = match.group(1)
          found.set()
    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.2):
      if self.proc.poll() is not None or time.monotonic() > deadline:
        self.stop()
        raise AssertionError("treadle-serve did not start:\n" + "".join(self.log[-40:]))

  def health(self) -> dict:
    return httpx.get(f"{self.url}/health", timeout=10).json()

  def wait_for(self, predicate, timeout: float = 20) -> dict:
    """Polls /health until predicate(health) holds; returns that health."""
    deadline = time.monotonic() + timeout
    while True:
      health = self.health()
      if predicate(health):
        return health
      if time.monotonic() > deadline:
        raise AssertionError(f"timed out; last /health: {health}")
      time.sleep(0.05)

  def exit_report(self) -> str | None:
    """How this server ended, if it did without `stop`: its exit code and the end of its log."""
    code = self.proc.poll()
    if code is None or self.stopped:
      return None
    how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return (f"treadle-serve {' '.join(self.flags)} (pid {self.proc.pid}) {how}; "
            "the end of its log:\n" + "".join(self.log[-60:]))

  def stop(self) -> None:
    self.stopped = True
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait(timeout=30)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """A test that failed while a server of this worker was gone says how it ended (a dead
  shared server otherwise shows only as "connection refused" in whichever test came next)."""
  outcome = yield
  report = outcome.get_result()
  if report.failed:
    for server in _STARTED:
      if (ended := server.exit_report()) is not None:
        report.sections.append(("treadle-serve ended", ended))


def assert_refused_at_start(workdir, flag: str, message: str) -> None:
  """treadle-serve with `flag` (on any free port unless it sets one: 8000 may be taken here)
  exits 2 with one `error:` line holding `message`."""
  proc = run_cli("treadle.serve.main", f"--workdir={workdir}", "--port=0", flag, check=False)
  # fail() puts the line after a line break when background threads are alive (JAX's may be)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: ") and message in lines[0], proc.stderr[-2000:]


@pytest.fixture(scope="session")
def served_run(tmp_path_factory, text_file):
  """A tiny run trained long enough that greedy text is not one repeated character."""
  workdir = tmp_path_factory.mktemp("serve") / "tiny"
  run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
          f"--config.data.path={text_file}", "--config.train.num_steps=200",
          "--config.train.eval_every=100", "--config.train.checkpoint_every=100",
          "--config.optimizer.learning_rate=1e-2")
  return workdir


@pytest.fixture(scope="session")
def server(served_run):
  """32 slots, as the issue's concurrency test needs, and a short queue (shared by the test
  files a worker runs: each start compiles)."""
  proc = ServerProcess(served_run, "--max_batch=32", "--max_queue=8")
  yield proc
  proc.stop()
