"""The training loop: init or restore, train steps, evaluation, checkpoints, final test loss."""
import dataclasses
import json
import logging
import pathlib
from typing import Any

import jax

from treadle.model import lora
from treadle.train import checkpoint
from treadle.train import config as config_lib
from treadle.common import fileio
from treadle.train import downstream
from treadle.train import finetune
from treadle.train import interrupts
from treadle.train import mesh as mesh_lib
from treadle.train import metrics as metrics_lib
from treadle.train import optimizer
from treadle.train import perf
from treadle.train import reporting
from treadle.train import state as state_lib
from treadle.train import step as step_lib
from treadle.train import tasks
from treadle.train import workdir as workdir_lib

log = logging.getLogger("treadle")


class TrainingError(RuntimeError):
  """A run that cannot continue (non-finite loss, incompatible workdir, ...)."""


@dataclasses.dataclass
class Progress:
  """Loop bookkeeping saved with every checkpoint so early stopping survives restarts."""
  best_val_loss: float = float("inf")
  evals_since_best: int = 0
  nonfinite_steps: int = 0


@dataclasses.dataclass
class Run:
  """Everything built once at start: config, data, mesh, compiled steps."""
  cfg: config_lib.RunConfig
  workdir: pathlib.Path
  task: tasks.Task
  splits: tasks.Splits
  mesh: jax.sharding.Mesh
  state_shardings: state_lib.TrainState
  batch_sharding: Any
  tx: Any
  train_step: Any
  eval_step: Any
  is_main: bool
  scorer: downstream.Scorer | None = None  # eval.tasks, scored at every evaluation


def prepare(cfg: config_lib.RunConfig, workdir) -> Run:
  """Validates everything (data, mesh, shapes, saved config) before writing anything."""
  workdir = pathlib.Path(workdir)
  task = tasks.get(cfg.task)
  init_dir = checkpoint.locate(cfg.train.init_from)[0] if cfg.train.init_from else None
  if init_dir is not None:
    workdir_lib.check_artifacts(init_dir, "train.init_from")
  workdir_lib.check_artifacts(workdir)  # before the task reads the workdir's tokenizer
  if cfg.eval is not None and cfg.eval.tasks:
    downstream.read(cfg.eval.tasks)  # a bad task file fails before the data is tokenized
  splits, cfg = task.load(cfg, workdir, init_dir)
  _check_saved_config(cfg, workdir)
  workdir_lib.check_data(workdir, splits, _data_source(cfg))
  finetune.check_source(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh.shape)
  rules = mesh_lib.rules(cfg.mesh.rules)
  _check_batch(cfg.train, mesh)
  metrics_lib.check_wandb(cfg.train.wandb_project)
  graphdef, abstract_params, specs = state_lib.model_graph(cfg.model)
  tx = optimizer.build(cfg.optimizer, cfg.train.num_steps, specs,
                       optimizer.hidden_lr_scale(cfg.model))
  if cfg.finetune.lora_rank:
    tx = finetune.freeze_base(tx, abstract_params)
  shardings = state_lib.shardings(cfg.model, tx, mesh, rules)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  train_step, eval_step = step_lib.compile_steps(
      task, graphdef, tx, optimizer.schedule(cfg.optimizer, cfg.train.num_steps),
      cfg.train.grad_accum_steps, cfg.model.dropout > 0, rules, shardings, batch_sharding)
  scorer = (downstream.Scorer(cfg.eval.tasks, splits.artifact, cfg.model.max_seq_len, graphdef,
                              shardings.params, mesh, rules, cfg.train.batch_size)
            if cfg.eval is not None and cfg.eval.tasks else None)
  run = Run(cfg, workdir, task, splits, mesh, shardings, batch_sharding, tx,
            train_step, eval_step, jax.process_index() == 0, scorer)
  task.attach(run)
  return run


def _data_source(cfg: config_lib.RunConfig) -> str:
  names = [f"data.{k}={getattr(cfg.data, k)!r}" for k in ("path", "dataset")
           if hasattr(cfg.data, k)]
  return ", ".join(names) or "data"


def _check_batch(train_cfg: config_lib.TrainConfig, mesh) -> None:
  parallel = mesh_lib.batch_parallelism(mesh)
  micro = train_cfg.batch_size // train_cfg.grad_accum_steps
  if micro % parallel:
    raise ValueError(f"train.batch_size/train.grad_accum_steps={micro} is not divisible by the "
                     f"{parallel} batch shards of mesh data x fsdp")


def _check_saved_config(cfg: config_lib.RunConfig, workdir: pathlib.Path) -> None:
  path = workdir / "config.json"
  if not path.exists():
    return
  refused, allowed = config_lib.differences(config_lib.from_json(path), cfg)
  if refused:
    raise TrainingError(f"workdir {str(workdir)!r} holds another experiment; resume may not "
                        f"change: {', '.join(refused)} (use a new workdir)")
  if allowed:
    log.info("config changes on resume (allowed): %s", ", ".join(allowed))


def _write_run_files(run: Run) -> None:
  if not run.is_main:
    return
  run.workdir.mkdir(parents=True, exist_ok=True)
  run.task.save_artifact(run.splits, run.workdir)
  _write_json(run.workdir / "config.json", run.cfg.to_dict())
  workdir_lib.record(run.workdir, run.splits)


def _write_json(path: pathlib.Path, value) -> None:
  fileio.atomic_write(path, json.dumps(value, indent=2))  # readers never see half a file


def _global_batch(run: Run, local: dict) -> dict:
  """This process's rows -> global arrays split over the mesh's batch axes."""
  return {k: jax.make_array_from_process_local_data(
      run.batch_sharding, v, (run.cfg.train.batch_size, *v.shape[1:])) for k, v in local.items()}


def init_or_restore(run: Run, mgr, data_iter) -> tuple[state_lib.TrainState, Progress]:
  """The newest checkpoint that restores (damaged newer ones are moved aside), else a fresh
  state. metrics.jsonl then loses the rows past that step: the steps replayed are logged once."""
  abstract = state_lib.abstract_state(run.cfg.model, run.tx, run.state_shardings)
  restored = checkpoint.restore_newest_intact(mgr, abstract, data_iter, log, run.is_main)
  if run.is_main:
    metrics_lib.drop_after(run.workdir, restored[0] if restored else 0)
  if restored is not None:
    step, state, extra = restored
    log.info("resumed from step %d", step)
    return state, Progress(**extra)
  params = None
  if run.cfg.train.init_from:
    params = finetune.source_params(run.cfg, run.mesh, mesh_lib.rules(run.cfg.mesh.rules),
                                    lora.base_params(run.state_shardings.params))
  return state_lib.create(run.cfg.model, run.tx, run.cfg.train.seed, run.state_shardings,
                          params), Progress()


def eval_set(run: Run, params, batches: list[dict]) -> dict:
  """Fixed evaluation batches as global arrays stacked on a leading axis, as the task's loss
  reads them (`params`: the model a task may score them with, e.g. DPO's reference)."""
  sharding = mesh_lib.stacked_batch_sharding(run.mesh)
  stacked = tasks.base.numpy_stack(batches)
  return run.task.prepare_eval(run, params, {k: jax.make_array_from_process_local_data(
      sharding, v, (v.shape[0], run.cfg.train.batch_size, *v.shape[2:]))
      for k, v in stacked.items()})


def evaluate(run: Run, params, stacked: dict) -> dict[str, float]:
  """Mean loss and task metrics over the fixed batches (weighted by examples, or by the
  loss's own weight), or the task's own evaluation (GRPO's rewards)."""
  if (own := run.task.evaluate(run, params, stacked)) is not None:
    return {k: float(v) for k, v in own.items()}
  return {k: float(v) for k, v in jax.device_get(run.eval_step(params, stacked)).items()}


def _evaluation_row(run: Run, params, val: dict) -> dict[str, float]:
  """The metrics row of an evaluation: val_* and the eval.tasks scores (eval/NAME/acc...)."""
  row = {f"val_{k}": v for k, v in val.items()}
  return {**row, **(run.scorer(params) if run.scorer is not None else {})}


def _save(run: Run, mgr, state, data_iter, progress: Progress, val_loss=None) -> None:
  checkpoint.save(mgr, int(jax.device_get(state.step)), state, data_iter, run.cfg.to_dict(),
                  val_loss, extra=dataclasses.asdict(progress))


def _throughput(run: Run) -> perf.Throughput:
  cfg = run.cfg
  return perf.Throughput(cfg.train.batch_size * run.task.units_per_example(cfg), run.task.unit,
                         run.task.flops_per_unit(cfg),
                         getattr(cfg.model, "compute_dtype", "float32"))


def _log_step(run: Run, mgr, writer, throughput: perf.Throughput, step: int, m: dict,
              host: dict, progress: Progress, display: reporting.Display):
  """Host-side handling of step `step`'s metrics (pulled one step late); `host`: the task's
  metrics of making the batch (GRPO's rewards)."""
  if not bool(m["finite"]):
    progress.nonfinite_steps += 1
    log.warning("step %d: non-finite loss or gradient; update not applied (%d so far)",
                step, progress.nonfinite_steps)
    writer.write(step, nonfinite=True, train_loss=str(m["train_loss"]))
    if progress.nonfinite_steps > run.cfg.train.max_nonfinite_steps:
      last = mgr.latest_step()
      kept = "no checkpoint was written" if last is None else f"checkpoint {last} is intact"
      raise TrainingError(f"non-finite loss or gradient at step {step}; stopping ({kept})")
  if step % run.cfg.train.log_every == 0:
    extra = {k: float(v) for k, v in m.items() if k.startswith("train_") and k != "train_loss"}
    rates = throughput.measure(step)
    writer.write(step, train_loss=float(m["train_loss"]), learning_rate=float(m["learning_rate"]),
                 grad_norm=float(m["grad_norm"]), **extra, **host, **rates)
    display.train_line(step, float(m["train_loss"]), float(m["learning_rate"]), rates)


def _wants_eval(cfg: config_lib.TrainConfig, done: int) -> bool:
  return done % cfg.eval_every == 0 or done == cfg.num_steps


def _after_eval(run: Run, progress: Progress, val_loss: float) -> bool:
  """Updates best/patience; returns True when val loss improved on the best."""
  improved = val_loss < progress.best_val_loss
  if improved:
    # patience restarts only on an improvement larger than the configured minimum
    if val_loss < progress.best_val_loss - run.cfg.train.early_stopping_min_delta:
      progress.evals_since_best = 0
    else:
      progress.evals_since_best += 1
    progress.best_val_loss = val_loss
  else:
    progress.evals_since_best += 1
  return improved


def train_steps(run: Run, mgr, state, data_iter, progress: Progress, val_batches, writer,
                stop: interrupts.StopSignal) -> tuple[state_lib.TrainState, str]:
  """Runs to train.num_steps; returns (state, outcome) with outcome in
  {"completed", "early_stopped", "reached_target", "interrupted"}."""
  if stop.received:  # before the first step (a start-up signal whose exit was lost): no new work
    return state, "interrupted"
  cfg = run.cfg.train
  start = int(jax.device_get(state.step))
  throughput = _throughput(run)
  throughput.reset(start)
  display = reporting.Display(cfg.num_steps, start, run.is_main)
  profile = reporting.ProfileWindow(cfg.profile_window, run.workdir / "profile")
  pending, outcome = None, None
  if start == 0 and run.task.evaluate_before_training:
    # the starting model's figures (post-training: the baseline its curves start from);
    # not a candidate for the best checkpoint, which only steps that ran can be
    val = evaluate(run, state.params, val_batches)
    row = _evaluation_row(run, state.params, val)
    writer.write(0, **row)
    display.eval_line(0, row, None)
    throughput.reset(0)

  def flush():
    nonlocal pending
    if pending is not None:
      _log_step(run, mgr, writer, throughput, pending[0], jax.device_get(pending[1]),
                pending[2], progress, display)
      pending = None

  for done in range(start + 1, cfg.num_steps + 1):
    profile.before_step(done)
    batch, host_metrics = run.task.prepare_batch(run, state.params,
                                                 _global_batch(run, next(data_iter)), done)
    state, step_metrics = run.train_step(state, batch)
    profile.after_step(done, step_metrics)
    flush()  # the previous step's metrics: the device is already busy with this one
    pending = (done, step_metrics, host_metrics)
    if done == start + 1:
      jax.block_until_ready(step_metrics)
      throughput.reset(done)  # the first step includes compilation: not throughput
    display.advance()
    val_loss, improved, outcome = None, False, None
    if _wants_eval(cfg, done):
      flush()
      val = evaluate(run, state.params, val_batches)
      val_loss = val["loss"]
      improved = _after_eval(run, progress, val_loss)
      row = _evaluation_row(run, state.params, val)
      writer.write(done, **row)
      display.eval_line(done, row, progress.best_val_loss)
      if cfg.early_stopping_patience and progress.evals_since_best >= cfg.early_stopping_patience:
        outcome = "early_stopped"
      if cfg.target_val_loss and val_loss <= cfg.target_val_loss:
        outcome = "reached_target"
    if stop.received:
      outcome = "interrupted"
    if (done % cfg.checkpoint_every == 0 or done == cfg.num_steps or outcome
        or (cfg.keep_best and improved)):
      flush()
      _save(run, mgr, state, data_iter, progress, val_loss)
    if val_loss is not None or done % cfg.checkpoint_every == 0:
      throughput.reset(done)  # tokens/second measures training only, not eval or saves
    if outcome:
      break
  flush()
  profile.stop(state)  # a run that ended inside the window still writes its trace
  display.close()
  return state, outcome or "completed"


def test_metrics(run: Run, mgr, state) -> tuple[dict, int, Any]:
  """Test-set loss and metrics of the best checkpoint by val loss (else the final state);
  returns (metrics, step evaluated, its params)."""
  final = int(jax.device_get(state.step))
  best = checkpoint.best_step(mgr) if run.cfg.train.keep_best else None
  params = state.params
  if best is not None and best != final:
    abstract = state_lib.abstract_state(run.cfg.model, run.tx, run.state_shardings)
    params = checkpoint.restore(mgr, best, abstract).params
  batches = eval_set(run, params, run.task.eval_batches(run.splits.test, run.cfg,
                                                        jax.process_index(), jax.process_count()))
  return evaluate(run, params, batches), (final if best is None else best), params


def _log_layout(run: Run, state) -> None:
  table = mesh_lib.sharding_table(state.params)
  if run.is_main:
    (run.workdir / "sharding.json").write_text(json.dumps(table, indent=1))
  log.info("%d devices (%s), %d processes, mesh %s, rules %r\n%s", jax.device_count(),
           jax.devices()[0].platform, jax.process_count(), dict(run.mesh.shape),
           run.cfg.mesh.rules, mesh_lib.format_table(table))


def train(cfg: config_lib.RunConfig, workdir) -> dict:
  """Trains (or resumes) the run in `workdir`, holding its lock throughout; returns a summary
  of the outcome."""
  workdir = pathlib.Path(workdir)
  with workdir_lib.claim(workdir, enabled=jax.process_index() == 0):
    try:
      return _train_owned(cfg, workdir)
    except SystemExit:  # a signal before the loop or in the final evaluation
      if interrupts.received_outside_training() and jax.process_index() == 0:
        _summarize_interrupted(workdir)
      raise


def _summarize_interrupted(workdir: pathlib.Path) -> None:
  """summary.json of a run a signal stopped outside the loop, where its last checkpoint left
  it; nothing if its files were never written (a fresh workdir is then removed again)."""
  if not (workdir / "config.json").exists():
    return
  saved = checkpoint.directory(workdir)
  steps = [int(p.name) for p in saved.iterdir() if p.name.isdigit()] if saved.is_dir() else []
  # best_val_loss is saved inside the checkpoint: unknown (null) without restoring it
  _write_json(workdir / "summary.json", {"outcome": "interrupted", "step": max(steps, default=0),
                                         "best_val_loss": None if steps else float("inf")})


def _train_owned(cfg: config_lib.RunConfig, workdir: pathlib.Path) -> dict:
  run = prepare(cfg, workdir)
  _write_run_files(run)
  data_iter = run.task.train_iterator(run.splits.train, cfg, jax.process_index(),
                                      jax.process_count())
  mgr = checkpoint.manager(run.workdir, cfg.train.keep_checkpoints, cfg.train.keep_best)
  writer = None
  try:
    state, progress = init_or_restore(run, mgr, data_iter)
    # after drop_after's rewrite of metrics.jsonl
    writer = metrics_lib.MetricsWriter(run.workdir, run.is_main, cfg.train.wandb_project,
                                       run.cfg.to_dict())
    _log_layout(run, state)
    val_batches = eval_set(run, state.params, run.task.eval_batches(
        run.splits.val, cfg, jax.process_index(), jax.process_count()))
    with interrupts.StopSignal() as stop:  # SIGTERM/SIGINT: finish the step, checkpoint, exit
      state, outcome = train_steps(run, mgr, state, data_iter, progress, val_batches, writer,
                                   stop)
    mgr.wait_until_finished()
    summary = {"outcome": outcome, "step": int(jax.device_get(state.step)),
               "best_val_loss": progress.best_val_loss}
    if outcome != "interrupted":
      test, test_step, params = test_metrics(run, mgr, state)
      test = {f"test_{k}": v for k, v in test.items()}
      if run.is_main:
        test.update(run.task.finish(run, params, test_step))
      writer.write(summary["step"], **test, test_checkpoint_step=test_step)
      summary.update(test, test_checkpoint_step=test_step)
    if run.is_main:
      _write_json(run.workdir / "summary.json", summary)
    return summary
  finally:
    mgr.wait_until_finished()
    mgr.close()
    if writer is not None:
      writer.close()
