"""train/background.py: a disk error found through Orbax's and TensorStore's wrappers, and the
reports of threads and callbacks dropped after one while every other report still prints.
End to end (a real full disk): tests/train/test_workdir_cli.py."""
import errno
import subprocess
import sys

from tests.conftest import REPO, child_env
from treadle.train import background

_TS_FULL = ('RESOURCE_EXHAUSTED: Error writing "rng/0" in OCDBT database at local file "/w/ckpt/": '
            'Failed writing: "/w/ckpt/d/0a1b": Failed to write 31626 bytes to file 11: No space '
            "left on device [os_error_code='28']")


def test_a_tensorstore_status_with_an_os_error_code_is_a_disk_error_naming_its_file():
  try:
    try:
      raise ValueError(_TS_FULL)
    except ValueError as e:
      raise RuntimeError("Save Finalize thread (save_finalize) failed.") from e
  except RuntimeError as wrapped:
    found = background.disk_error(wrapped)
  assert (found.errno, found.filename) == (errno.ENOSPC, "/w/ckpt/d/0a1b")
  assert background.describe(found, "/w") == ("No space left on device writing '/w/ckpt/d/0a1b'; "
                                              "checkpoints already written are intact")
  # damage and other statuses are not disk errors (restore moves a damaged step aside instead)
  assert background.disk_error(ValueError("DATA_LOSS: Error reading local file")) is None
  assert background.disk_error(ValueError("NOT_FOUND: [os_error_code='2']")) is None
  assert background.disk_error(OSError(errno.EROFS, "Read-only file system")).errno == errno.EROFS


_REPORTS = """
import logging, sys, threading
from treadle.train import background
logging.basicConfig(stream=sys.stderr, format="%(name)s %(message)s")
quiet = background.Quiet().install()
def in_thread(error):
  def run():
    raise error
  thread = threading.Thread(target=run, name=f"raises-{type(error).__name__}")
  thread.start()
  thread.join()
def unraisable(error):
  try:
    raise error
  except BaseException as e:
    sys.unraisablehook(type("U", (), dict(exc_type=type(e), exc_value=e,
                                          exc_traceback=e.__traceback__, err_msg=None,
                                          object=None))())
def logged(error):
  try:
    raise error
  except BaseException:
    logging.getLogger("orbax").exception("writer failed")
unraisable(RuntimeError("Event loop is closed"))  # a late TensorStore result: always dropped
in_thread(ValueError("a real bug before the disk failed"))
logged(KeyError("a real error logged before the disk failed"))
logging.getLogger("treadle").warning("our own line")
in_thread(ValueError(sys.argv[1]))  # the disk fails: kept, not printed
logged(ValueError(sys.argv[1]))
unraisable(OSError(28, "No space left on device"))  # tensorboardX's flush at exit
in_thread(OSError("handle is closed"))  # its writer thread after that
print(quiet.first.filename, quiet.dropped)
"""


def test_after_a_disk_error_background_reports_are_dropped_and_earlier_ones_print():
  proc = subprocess.run([sys.executable, "-c", _REPORTS, _TS_FULL], cwd=REPO, env=child_env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["/w/ckpt/d/0a1b", "5"]
  err = proc.stderr
  assert "Exception in thread raises-ValueError" in err and "a real bug before" in err, err
  assert "orbax writer failed" in err and "KeyError: 'a real error logged before" in err, err
  assert "treadle our own line" in err
  assert err.count("Traceback") == 2, err  # the two real errors, nothing after the disk error
  for dropped in ("Event loop is closed", "RESOURCE_EXHAUSTED", "No space left",
                  "handle is closed"):
    assert dropped not in err, err
