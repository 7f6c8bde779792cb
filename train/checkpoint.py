"""Orbax checkpoints: train state + Grain iterator state + resolved config in one step."""
import logging
import math
import pathlib
import re
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from treadle.model import quant
from treadle.train import state as state_lib

SUBDIR = "checkpoints"


def directory(workdir) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / SUBDIR


def manager(workdir, keep: int = 2, keep_best: bool = True,
            async_save: bool = True) -> ocp.CheckpointManager:
  """Keeps the latest `keep` steps plus (optionally) the one with the lowest val_loss.

  Orbax writes each step into a temporary directory and renames it when complete, so a
  process killed mid-write never leaves a step that restore would pick up.
  """
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if keep_best:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda m: _ranked(m["val_loss"]), reverse=True, n=1,
        keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      # best_fn only makes Orbax write the metrics; retention is the policy above
      best_fn=lambda m: m["val_loss"], best_mode="min",
      # stale temporary dirs of a killed write are removed at start (complete steps never are)
      cleanup_tmp_directories=True,
      enable_async_checkpointing=async_save, create=True)
  mgr = ocp.CheckpointManager(directory(workdir), options=options)
  # That cleanup runs in an Orbax thread that nothing awaits before the first save, not even
  # close(): a run stopped earlier (a SIGTERM at start-up) exited while it still ran, and at
  # interpreter shutdown it failed with a traceback ("cannot schedule new futures after
  # interpreter shutdown"; seen once in CI). It is short: wait for it here. Orbax has no
  # public call for this (orbax-checkpoint 0.12.8, both locks); without it, as before.
  wait_for_cleanup = getattr(mgr, "_maybe_await_cleanup_tmp_directory", None)
  if wait_for_cleanup is not None:
    wait_for_cleanup()
  return mgr


def save(mgr: ocp.CheckpointManager, step: int, state: state_lib.TrainState, data_iter,
         config: dict, val_loss: float | None = None, extra: dict | None = None) -> None:
  """One step = state + data iterator + config (+ loop bookkeeping `extra`), async."""
  items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config),
           "extra": ocp.args.JsonSave(extra or {})}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  metrics = None if val_loss is None else {"val_loss": float(val_loss)}
  mgr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore(mgr: ocp.CheckpointManager, step: int, abstract: state_lib.TrainState,
            data_iter=None) -> state_lib.TrainState:
  """Restores into `abstract`'s shardings (any mesh); advances `data_iter` in place."""
  items = {"state": ocp.args.StandardRestore(abstract)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  return mgr.restore(step, args=ocp.args.Composite(**items))["state"]


def reader(workdir) -> ocp.CheckpointManager:
  """A read-only manager that can restore parts of a step (parameters only, config)."""
  path = directory(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f"no checkpoints in {str(workdir)!r}")
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # Orbax warns that a read-only manager is read-only
  try:
    return ocp.CheckpointManager(
        path, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                             "config": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  finally:
    absl_logger.setLevel(level)


def restore_params(mgr: ocp.CheckpointManager, step: int, abstract_params: Any) -> Any:
  """Parameters only (sampling, fine-tuning): the optimizer state is never read."""
  target = {"params": abstract_params}
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils
                                   .construct_restore_args(target), partial_restore=True)))
  return restored["state"]["params"]


def resolve_step(mgr: ocp.CheckpointManager, step: int | str | None) -> int:
  """None = latest, "best" = lowest val_loss (latest if none recorded), or an exact step."""
  steps = mgr.all_steps()
  if not steps:
    raise FileNotFoundError(f"no complete checkpoint in {str(mgr.directory)!r}")
  if step is None or step == "latest":
    return max(steps)
  if step == "best":
    best = best_step(mgr)
    return best if best is not None else _latest_not_nan(mgr, steps)
  if int(step) not in steps:
    raise FileNotFoundError(f"no checkpoint step {step} in {str(mgr.directory)!r} "
                            f"(have {sorted(steps)})")
  return int(step)


def locate(path) -> tuple[pathlib.Path, int | None]:
  """A workdir (latest step) or a step directory `WORKDIR/checkpoints/N` -> (workdir, step)."""
  path = pathlib.Path(path).absolute()
  if path.parent.name == SUBDIR and path.name.isdigit():
    return path.parent.parent, int(path.name)
  if (path / SUBDIR).is_dir():
    return path, None
  raise FileNotFoundError(f"{str(path)!r} is neither a run directory nor a checkpoint step")


def best_step(mgr: ocp.CheckpointManager) -> int | None:
  """The kept step with the lowest recorded val_loss (None if none recorded one); a NaN
  val_loss is never the best."""
  scored = [(v, s) for s, v in _val_losses(mgr, mgr.all_steps()) if not math.isnan(v)]
  return min(scored)[1] if scored else None


def _val_losses(mgr: ocp.CheckpointManager, steps) -> list[tuple[int, float]]:
  return [(s, float(m["val_loss"])) for s in steps if (m := mgr.metrics(s)) and "val_loss" in m]


def _ranked(val_loss: float) -> float:
  """NaN compares false both ways, so sorted() may rank it anywhere, even as the best; as
  +inf it ranks last."""
  return math.inf if math.isnan(val_loss) else val_loss


def _latest_not_nan(mgr: ocp.CheckpointManager, steps) -> int:
  """"best" when no step has a usable val_loss: the latest step that is not NaN."""
  nan = {s for s, v in _val_losses(mgr, steps) if math.isnan(v)}
  usable = [s for s in steps if s not in nan]
  if not usable:
    raise ValueError(f"--step=best: every checkpoint in {str(mgr.directory)!r} has a NaN "
                     f"val_loss (steps {sorted(steps)}); pass a step number")
  return max(usable)


def restore_extra(mgr: ocp.CheckpointManager, step: int) -> dict:
  return mgr.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"]


def saved_config(mgr: ocp.CheckpointManager, step: int) -> dict:
  return mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def check_float(workdir) -> None:
  """A run written by treadle-quantize (int8 weights) is a one-line ValueError: only the
  sampler and the server read it (infer/quantized.py)."""
  if (pathlib.Path(workdir) / quant.FILENAME).exists():
    raise ValueError(f"{str(workdir)!r} holds int8 weights (written by treadle-quantize): "
                     "only treadle-sample and treadle-serve read it; use the float run")


def load_params(workdir, step: int | str | None, model_cfg,
                shardings: Callable[[Any, Any], Any], dtype=None) -> tuple[Any, int]:
  """A run's parameters only (sampling, prediction, fine-tuning) -> (params, step).

  `step`: None = latest, "best", or a number. `shardings(abstract_params, logical_specs)`
  gives each parameter's sharding. `dtype` (e.g. bfloat16): floating parameters are cast
  to it as Orbax reads them (the float32 copy never exists whole). The reader is closed
  whatever happens. A quantized run is refused (`check_float`)."""
  check_float(workdir)
  _, abstract, specs = state_lib.model_graph(model_cfg)
  as_read = lambda a: dtype if dtype is not None and jnp.issubdtype(a.dtype, jnp.floating) \
      else a.dtype
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, as_read(a), sharding=s),
                        abstract, shardings(abstract, specs))
  mgr = reader(workdir)
  try:
    step = resolve_step(mgr, step)
    return restore_params(mgr, step, target), step
  finally:
    mgr.close()


DAMAGED_SUBDIR = "damaged_checkpoints"


def restore_newest_intact(mgr: ocp.CheckpointManager, abstract: state_lib.TrainState, data_iter,
                          log: logging.Logger, move_aside: bool = True
                          ) -> tuple[int, state_lib.TrainState, dict] | None:
  """Restores the newest step that restores completely (state, data iterator, bookkeeping);
  returns (step, state, extra), or None when there is no step.

  A newer step that fails (a missing or truncated shard, a missing iterator state, missing
  metadata) is moved to WORKDIR/damaged_checkpoints/ for inspection (by process 0:
  `move_aside`), with one warning line. Any other failure (an I/O error, out of memory)
  says nothing about the files: it is raised as a one-line RuntimeError and nothing moves.
  If no step restores, nothing is moved and the newest step's error is raised."""
  steps = sorted(mgr.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      state = restore(mgr, step, abstract, data_iter)
      extra = restore_extra(mgr, step)
    except Exception as e:  # Orbax, TensorStore and Grain raise many types for damaged files
      if not is_damage(e):
        raise RuntimeError(f"checkpoint step {step} in {str(mgr.directory)!r} could not be "
                           f"read ({_first_line(e)}); left in place") from e
      failures.append((step, _first_line(e)))
      continue
    for bad, reason in failures:
      moved = _move_aside(pathlib.Path(mgr.directory), bad) if move_aside else "(process 0)"
      log.warning("checkpoint step %d is damaged (%s); moved to %s; restoring step %d",
                  bad, reason, moved, step)
    if failures:
      mgr.reload()
    return step, state, extra
  if failures:
    step, reason = failures[0]
    raise RuntimeError(f"no checkpoint in {str(mgr.directory)!r} restores; the newest, step "
                       f"{step}: {reason}")
  return None


# TensorStore's status codes (at the start of its ValueErrors) that mean the files are
# wrong: a truncated or zeroed shard, a missing one, an unreadable manifest. Others
# (UNAVAILABLE for EIO, RESOURCE_EXHAUSTED for ENOSPC/ENOMEM, PERMISSION_DENIED) are not.
_DAMAGE_CODES = {"DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION", "NOT_FOUND",
                 "INVALID_ARGUMENT"}
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def is_damage(error: BaseException) -> bool:
  """Whether a restore failed because of the step's files (missing, truncated,
  unparseable), looking through the causes Orbax wraps them in. A failure that is also
  an I/O error or out of memory anywhere in its chain is not damage."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return (not any(map(_passing, chain))) and any(map(_damaged, chain))


def _status_code(error: BaseException) -> str | None:
  match = re.match(r"([A-Z][A-Z_]+): ", str(error))
  return match.group(1) if match else None


def _passing(error: BaseException) -> bool:
  code = _status_code(error)
  return (isinstance(error, MemoryError) or (isinstance(error, OSError)
          and not isinstance(error, _MISSING)) or (code is not None and code not in _DAMAGE_CODES))


def _damaged(error: BaseException) -> bool:
  if isinstance(error, KeyError):  # Orbax: 'Item "data_iter" was not found in the checkpoint'
    return "not found in the checkpoint" in str(error)
  return isinstance(error, (*_MISSING, ValueError, EOFError))  # json's errors are ValueErrors


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def _move_aside(checkpoints: pathlib.Path, step: int) -> pathlib.Path:
  """WORKDIR/checkpoints/N -> WORKDIR/damaged_checkpoints/N (N.1, N.2, ... if taken): out of
  Orbax's directory, so it is neither restored nor cleaned up, and never deleted."""
  target_dir = checkpoints.parent / DAMAGED_SUBDIR
  target_dir.mkdir(exist_ok=True)
  target, n = target_dir / str(step), 0
  while target.exists():
    n += 1
    target = target_dir / f"{step}.{n}"
  (checkpoints / str(step)).rename(target)
  return target
