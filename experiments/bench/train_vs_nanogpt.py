"""Training tokens/second beside nanoGPT's train.py: same model size, data, batch and dropout.

  .venv/bin/python -m experiments.bench.train_vs_nanogpt --size cpu_recipe --rounds 3 \
      --nanogpt_dir ../peers/nanoGPT --torch_python ../peers/torchvenv/bin/python

Each round runs nanoGPT's own train.py and treadle's own trainer (`python -m treadle.train.main`, the
treadle-train CLI) in fresh subprocesses, one after the other, alternating which goes first.
Both log their own per-step wall clock: nanoGPT prints every iteration (--log_interval=1),
treadle writes tokens/second every `--window` steps to metrics.jsonl (compilation excluded:
its loop restarts the clock after step 1). The first `--warmup` steps of each are dropped
(nanoGPT's iteration 0 also holds its start-up evaluation); the rest are cut into windows of
`--window` steps, and a round's figure is the median window's mean step time. The table
gives medians over rounds and the median of the per-round ratios. A neighbour's load on the
shared CPU does not fall on both alike: nanoGPT's two OpenMP threads collapse when one core
is taken (rounds of 10x+ in treadle's favour), so trust rounds where both ran near their
quiet speed, or pin both with --cores (experiments/bench/README.md).

nanoGPT stays outside this repository and nothing is written into its checkout: its data
(train.bin, val.bin, meta.pkl, built here as its data/shakespeare_char/prepare.py builds them
from the same tinyshakespeare file) and out_dir live in a scratch directory; `--dataset` is
that directory's absolute path, which train.py's os.path.join('data', dataset) keeps as is.
"""
import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import pickle
import re
import shlex
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from experiments.bench import machine

REPO = pathlib.Path(__file__).resolve().parents[2]
_ITER_LINE = re.compile(r"^iter (\d+): loss \S+, time ([\d.]+)ms", re.MULTILINE)
_DEVICES_LINE = re.compile(r"(\d+) devices \((\w+)\)")


@dataclasses.dataclass(frozen=True)
class Size:
  """One recipe, as both systems spell it."""
  treadle_config: str
  num_layers: int
  num_heads: int
  embed_dim: int
  seq_len: int
  batch_size: int
  dropout: float
  decay_steps: int   # the recipe's full length: both lr schedules as in the real run
  window: int        # default steps per timed window
  windows: int       # default timed windows per round
  warmup: int        # default leading steps dropped
  goal: float        # the treadle/nanoGPT tokens/s target

  def label(self) -> str:
    return (f"{self.num_layers}L/{self.num_heads}H/{self.embed_dim}d, context {self.seq_len}, "
            f"batch {self.batch_size}, dropout {self.dropout}")


SIZES = {
    # nanoGPT README's CPU command
    "cpu_recipe": Size("configs/shakespeare_char_cpu.py", 4, 4, 128, 64, 12, 0.0, 2000,
                       window=10, windows=5, warmup=10, goal=1.5),
    # config/train_shakespeare_char.py as is: ~10 s per step on each side, so few steps
    "shakespeare_char": Size("configs/shakespeare_char.py", 6, 6, 384, 256, 64, 0.2, 5000,
                             window=1, windows=3, warmup=1, goal=2.0),
}

# Left as they are, noted beside every result.
DIFFERENCES = (
    "GELU: treadle uses the tanh approximation (GPT-2's), nanoGPT nn.GELU() the exact erf",
    "vocabulary: treadle pads 65 -> 72 (a multiple of 8) and masks the padding; nanoGPT 65",
    "attention: treadle XLA einsums + softmax; nanoGPT torch scaled_dot_product_attention",
    "parallelism: treadle splits the batch over simulated CPU devices, one per core used; "
    "nanoGPT runs one process with torch's intra-op threads",
    "data split: treadle 90/5/5 train/val/test, nanoGPT 90/10 (random windows of the train "
    "part on both)",
)


def prepare_nanogpt_data(text_path: pathlib.Path, data_dir: pathlib.Path) -> None:
  """nanoGPT's data/shakespeare_char/prepare.py, minus its download (its venv lacks requests)."""
  text = text_path.read_text(encoding="utf-8")
  chars = sorted(set(text))
  stoi = {ch: i for i, ch in enumerate(chars)}
  n = int(len(text) * 0.9)
  data_dir.mkdir(parents=True)
  for name, part in (("train.bin", text[:n]), ("val.bin", text[n:])):
    np.array([stoi[c] for c in part], dtype=np.uint16).tofile(data_dir / name)
  meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
  with open(data_dir / "meta.pkl", "wb") as f:
    pickle.dump(meta, f)


def nanogpt_command(args: argparse.Namespace, size: Size, steps: int, scratch: pathlib.Path
                    ) -> list[str]:
  """The README's CPU command at this size; iterations 0..steps-1, one evaluation (at 0)."""
  nanogpt = pathlib.Path(args.nanogpt_dir).resolve()
  return [args.torch_python, str(nanogpt / "train.py"), "config/train_shakespeare_char.py",
          "--device=cpu", "--compile=False", "--log_interval=1",
          "--eval_iters=1",  # only iteration 0 evaluates, and it is dropped as warm-up
          f"--eval_interval={steps + 1}", f"--max_iters={steps - 1}",
          f"--lr_decay_iters={size.decay_steps}", f"--block_size={size.seq_len}",
          f"--batch_size={size.batch_size}", f"--n_layer={size.num_layers}",
          f"--n_head={size.num_heads}", f"--n_embd={size.embed_dim}",
          f"--dropout={size.dropout}", f"--dataset={scratch / 'data' / 'shakespeare_char'}",
          f"--out_dir={scratch / 'nanogpt_out'}"]


def treadle_command(args: argparse.Namespace, size: Size, steps: int, workdir: pathlib.Path,
                    scratch: pathlib.Path) -> list[str]:
  """The shipped config; overrides only shorten the run and keep eval/saves out of the window."""
  return [sys.executable, "-m", "treadle.train.main", f"--config={size.treadle_config}",
          f"--workdir={workdir}", f"--config.data.path={pathlib.Path(args.data).resolve()}",
          f"--config.data.cache_dir={scratch / 'treadle_cache'}",
          f"--config.train.num_steps={steps}", f"--config.train.log_every={args.window}",
          f"--config.optimizer.decay_steps={size.decay_steps}",
          f"--config.train.eval_every={steps + 1}",  # evaluates once, after the last step
          "--config.train.eval_batches=1", f"--config.train.checkpoint_every={steps}",
          f"--config.mesh.cpu_devices={args.cores}"]  # 0 = the config's default


def _torch_env(args: argparse.Namespace) -> dict:
  return dict(os.environ, **({"OMP_NUM_THREADS": str(args.cores)} if args.cores else {}))


def _run(command: list[str], cwd: pathlib.Path, env: dict) -> subprocess.CompletedProcess:
  out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
  if out.returncode:
    tail = "\n".join((out.stdout + out.stderr).splitlines()[-20:])
    raise RuntimeError(f"exit {out.returncode}: {shlex.join(command)}\n{tail}")
  return out


def window_means(step_ms: list[float], window: int) -> list[float]:
  return [statistics.fmean(step_ms[i:i + window])
          for i in range(0, len(step_ms) - window + 1, window)]


def run_nanogpt(args: argparse.Namespace, size: Size, scratch: pathlib.Path) -> list[float]:
  """Per-window mean ms/step of one nanoGPT run."""
  steps = args.warmup + args.window * args.windows
  env = dict(_torch_env(args), PYTHONDONTWRITEBYTECODE="1")  # no __pycache__ in the peer
  out = _run(nanogpt_command(args, size, steps, scratch), pathlib.Path(args.nanogpt_dir), env)
  times = {int(i): float(ms) for i, ms in _ITER_LINE.findall(out.stdout)}
  if sorted(times) != list(range(steps)):
    raise RuntimeError(f"nanoGPT logged iterations {sorted(times)}, expected 0..{steps - 1}")
  return window_means([times[i] for i in range(args.warmup, steps)], args.window)


def run_treadle(args: argparse.Namespace, size: Size, scratch: pathlib.Path, workdir_name: str
                ) -> tuple[list[float], str]:
  """Per-window mean ms/step of one treadle run, and its device line."""
  steps = args.warmup + args.window * args.windows
  workdir = scratch / workdir_name
  out = _run(treadle_command(args, size, steps, workdir, scratch), REPO, dict(os.environ))
  _check_treadle_model(size, json.loads((workdir / "config.json").read_text()))
  tokens = size.batch_size * size.seq_len
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  ms = [tokens / r["tokens_per_second"] * 1e3 for r in rows
        if "tokens_per_second" in r and r["step"] > args.warmup]
  if len(ms) != args.windows:
    raise RuntimeError(f"treadle logged {len(ms)} timed windows, expected {args.windows}")
  devices = _DEVICES_LINE.search(out.stderr)
  return ms, (f"{devices[1]} x {devices[2]}" if devices else "?")


def _check_treadle_model(size: Size, resolved: dict) -> None:
  """The shipped config must still be this size: a drifted config would compare other models."""
  model, data, train = resolved["model"], resolved["data"], resolved["train"]
  got = (model["num_layers"], model["num_heads"], model["embed_dim"], data["seq_len"],
         train["batch_size"], model["dropout"], model["use_bias"], model["compute_dtype"])
  want = (size.num_layers, size.num_heads, size.embed_dim, size.seq_len, size.batch_size,
          size.dropout, False, "float32")  # nanoGPT: bias=False, fp32 on the CPU
  if got != want:
    raise RuntimeError(f"{size.treadle_config} resolved to {got}, expected {want}")


def measure(args: argparse.Namespace, size: Size, scratch: pathlib.Path) -> dict:
  """Rounds alternate which system goes first, so drift in the load favours neither."""
  rounds = {"treadle": [], "nanogpt": []}
  devices = "?"
  for r in range(args.rounds):
    order = ("nanogpt", "treadle") if r % 2 == 0 else ("treadle", "nanogpt")
    for system in order:
      if system == "nanogpt":
        rounds["nanogpt"].append(run_nanogpt(args, size, scratch))
      else:
        ms, devices = run_treadle(args, size, scratch, f"treadle_round{r}")
        rounds["treadle"].append(ms)
      print(f"round {r + 1}/{args.rounds} {system}: ms/step per window "
            f"{[round(w, 1) for w in rounds[system][-1]]}", file=sys.stderr, flush=True)
  return {"windows_ms": rounds, "treadle_devices": devices}


def summarize(size: Size, windows_ms: dict) -> dict:
  tokens = size.batch_size * size.seq_len
  per_round = {k: [statistics.median(w) for w in v] for k, v in windows_ms.items()}
  ratios = [n / t for n, t in zip(per_round["nanogpt"], per_round["treadle"])]
  systems = {k: {"ms_per_step": statistics.median(v), "tokens_per_second":
                 tokens / statistics.median(v) * 1e3, "ms_per_step_rounds": v}
             for k, v in per_round.items()}
  ratio = statistics.median(ratios)
  return {"systems": systems, "ratio_rounds": ratios, "ratio": ratio, "goal": size.goal,
          "goal_met": ratio >= size.goal}


def _torch_info(args: argparse.Namespace) -> str:
  code = "import torch; print(torch.__version__, torch.get_num_threads())"
  version, threads = _run([args.torch_python, "-c", code], REPO, _torch_env(args)).stdout.split()
  return f"torch {version}, {threads} intra-op threads"


def _jax_version() -> str:
  code = "import jax; print(jax.__version__)"
  return "jax " + _run([sys.executable, "-c", code], REPO, dict(os.environ)).stdout.strip()


def _shell_commands(args: argparse.Namespace, size: Size, scratch: pathlib.Path) -> dict:
  """Round 1's commands as a shell would run them, pinning and threads included."""
  steps = args.warmup + args.window * args.windows
  pin = f"taskset -c {','.join(map(str, sorted(os.sched_getaffinity(0))))} " if args.cores else ""
  threads = f"OMP_NUM_THREADS={args.cores} " if args.cores else ""
  nanogpt_dir = pathlib.Path(args.nanogpt_dir).resolve()
  return {f"nanoGPT (cwd {nanogpt_dir})":
          threads + pin + shlex.join(nanogpt_command(args, size, steps, scratch)),
          f"treadle (cwd {REPO})": pin + shlex.join(
              treadle_command(args, size, steps, scratch / "treadle_round0", scratch))}


def print_table(result: dict) -> None:
  s = result["summary"]
  print(f"train tokens/s beside nanoGPT: {result['size']} ({result['model']}), fp32, "
        f"{result['date']}")
  print(f"{result['machine']}, {result['cpus']} cores, used: {result['cores']}; {result['jax']} "
        f"({result['treadle_devices']} devices); {result['torch']}")
  print(f"{result['rounds']} rounds; per round: {result['warmup']} warm-up steps dropped, "
        f"median of {result['windows']} windows x {result['window']} steps")
  print(f"{'system':8} {'ms/step':>9} {'tokens/s':>9}   ms/step per round")
  for name, label in (("treadle", "treadle"), ("nanogpt", "nanoGPT")):
    row = s["systems"][name]
    rounds = " ".join(f"{v:.1f}" for v in row["ms_per_step_rounds"])
    print(f"{label:8} {row['ms_per_step']:9.1f} {row['tokens_per_second']:9.0f}   {rounds}")
  rounds = " ".join(f"{v:.2f}" for v in s["ratio_rounds"])
  verdict = "met" if s["goal_met"] else "NOT met"
  print(f"treadle/nanoGPT tokens/s, median of per-round ratios: {s['ratio']:.2f}x "
        f"(rounds: {rounds}); issue's goal >= {s['goal']}x: {verdict}")
  print(f"load average (1 min) before/after: {result['load_average_before_after']}")
  print("differences left in:\n  " + "\n  ".join(result["differences"]))
  print(f"commands (round 1; scratch = {result['scratch']}):")
  for name, command in result["commands"].items():
    print(f"  {name}: {command}")


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", choices=sorted(SIZES), default="cpu_recipe")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--window", type=int, default=0, help="steps per timed window; 0 = the size's")
  p.add_argument("--windows", type=int, default=0, help="timed windows per round; 0 = the size's")
  p.add_argument("--warmup", type=int, default=0,
                 help="leading steps dropped (>= 1; treadle's step 1 compiles); 0 = the size's")
  p.add_argument("--data", default=str(REPO.parent / "shared/data/tinyshakespeare/input.txt"))
  p.add_argument("--nanogpt_dir", default=str(REPO.parent / "peers/nanoGPT"))
  p.add_argument("--torch_python", default=str(REPO.parent / "peers/torchvenv/bin/python"))
  p.add_argument("--cores", type=int, default=0,
                 help="pin both systems to this many cores, with as many torch threads and "
                      "treadle CPU devices; 0 = no pinning, each system's defaults")
  p.add_argument("--json", action="store_true", help="print JSON instead of a table")
  args = p.parse_args()
  size = SIZES[args.size]
  args.window = args.window or size.window
  args.windows = args.windows or size.windows
  args.warmup = args.warmup or size.warmup
  if args.warmup % args.window:
    # treadle logs whole windows, so warm-up must end on a window boundary for both
    p.error(f"--warmup={args.warmup} must be a multiple of --window={args.window}")
  return args


def main() -> None:
  args = parse_args()
  size = SIZES[args.size]
  if args.cores:  # children inherit the mask
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
  load_before = os.getloadavg()[0]
  started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  with tempfile.TemporaryDirectory(prefix="train_vs_nanogpt_") as tmp:
    scratch = pathlib.Path(tmp)
    prepare_nanogpt_data(pathlib.Path(args.data), scratch / "data" / "shakespeare_char")
    measured = measure(args, size, scratch)
    commands = _shell_commands(args, size, scratch)
  result = {"date": started, "size": args.size, "model": size.label(), "machine": machine.describe(),
            "cpus": os.cpu_count(), "cores": args.cores or "all (unpinned)",
            "jax": _jax_version(), "torch": _torch_info(args),
            "treadle_devices": measured["treadle_devices"], "rounds": args.rounds,
            "window": args.window, "windows": args.windows, "warmup": args.warmup,
            "summary": summarize(size, measured["windows_ms"]),
            "windows_ms": measured["windows_ms"],
            "load_average_before_after": (round(load_before, 2), round(os.getloadavg()[0], 2)),
            "differences": DIFFERENCES, "commands": commands, "scratch": str(scratch)}
  if args.json:
    print(json.dumps(result, indent=1))
  else:
    print_table(result)


if __name__ == "__main__":
  main()
