"""Shared command-line plumbing: one-line errors with exit code 2, absl flag parsing.

Imports nothing heavy: entry points choose jax's device layout after parsing flags.
"""
import contextlib
import os
import sys
import threading
from typing import Callable, NoReturn

from absl import app
from absl import flags


def fail(message: str, code: int = 2) -> NoReturn:
  """Print `error: message` as one line of its own and exit with `code`.

  Background threads (a failed Orbax save, tensorstore callbacks) may still be printing a
  traceback; the line goes out in one write, after a line break when such threads are alive,
  so it never lands in the middle of one of their lines."""
  sys.stderr.flush()
  start = "\n" if threading.active_count() > 1 else ""
  line = f"{start}error: {message}\n".encode(errors="replace")
  try:
    os.write(sys.stderr.fileno(), line)
  except (AttributeError, OSError, ValueError):  # a stderr without a file descriptor
    print(line.decode().lstrip("\n"), end="", file=sys.stderr)
  sys.exit(code)


def first_line(error: BaseException) -> str:
  """An exception as one line: its message's first line, or its type when it has none."""
  message = str(error).strip()
  return message.splitlines()[0] if message else type(error).__name__


def fail_with(error: BaseException, code: int = 2) -> NoReturn:
  fail(first_line(error), code)


@contextlib.contextmanager
def one_line_errors(*kinds: type[Exception]):
  """A command's body: these errors (default ValueError and FileNotFoundError, how treadle
  reports bad input) end it with `error: <first line>` and exit code 2, no traceback."""
  try:
    yield
  except (kinds or (ValueError, FileNotFoundError)) as e:
    fail_with(e)


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing with a one-line error and exit code 2 (absl's own prints usage, exits 1)."""
  try:
    return flags.FLAGS(argv)
  except SyntaxError as e:  # a --config file that is not valid Python
    fail(f"--config {e.filename!r}: syntax error at line {e.lineno}: {e.msg}")
  except OSError:  # an override read the --config file ml_collections had failed to load
    fail(f"--config {_config_arg(argv)!r}: no such file (or it cannot be read)")
  except flags.Error as e:
    fail(_first_and_cause(str(e)) if str(e) else type(e).__name__)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an unknown config key or a value of the wrong type
    overrides = " ".join(a for a in argv if a.startswith("--config."))
    fail(f"bad config override ({type(e).__name__}: {str(e).strip()}) in: {overrides}")


def config_file(holder, sections: tuple[str, ...]) -> "ml_collections.ConfigDict":
  """The --config file's ConfigDict; a file that is missing or failed to load, or that lacks
  one of `sections`, is a one-line error naming it."""
  from ml_collections import config_flags  # noqa: PLC0415 (light; kept local like its users)
  path = config_flags.get_config_filename(flags.FLAGS[holder.name])
  try:
    cfg = holder.value
    missing = [s for s in sections if s not in cfg]
  except OSError:  # ml_collections defers a load failure to the first use of the value
    fail(f"--config {path!r}: no such file (or it cannot be read)")
  except Exception as e:  # what the config file itself raised
    fail(f"--config {path!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
  if missing:
    fail(f"--config {path!r}: get_config() lacks the section(s) {', '.join(missing)}")
  return cfg


def _config_arg(argv: list[str]) -> str | None:
  """The file named by --config in argv (either spelling), without its `:arg` suffix."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":")[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":")[0]
  return None


def _first_and_cause(message: str) -> str:
  """A config file whose get_config raised: ml_collections puts the whole traceback in the
  message; its first line names the flag and its last line the error."""
  lines = [line for line in message.splitlines() if line.strip()]
  return f"{lines[0]} {lines[-1]}" if "Traceback" in message else lines[0]


def checkpoint_step(value: str | None) -> int | str | None:
  """The --step flag: None/"latest" = latest, "best", or a step number."""
  if value is None or value in ("latest", "best"):
    return value
  if not value.isdigit():
    fail(f"--step={value!r} must be a number, 'best' or 'latest'")
  return int(value)


def run(main: Callable[[list[str]], None]) -> None:
  app.run(main, flags_parser=parse_flags)
