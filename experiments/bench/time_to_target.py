"""Wall time to a validation loss on tinyshakespeare: treadle's fast config beside nanoGPT.

  .venv/bin/python -m experiments.bench.time_to_target --rounds 2 \
      --nanogpt_dir ../peers/nanoGPT --torch_python ../peers/torchvenv/bin/python

nanoGPT runs its README's CPU command (4L/4H/128d, context 64, batch 12, 2000 iterations,
evaluating every 250 on 20 batches per split); its time to the target is the wall time from
process start to the first `step N: ... val loss X` line with X <= target (generous to it:
the rest of its run is not counted). treadle runs `configs/shakespeare_fast_cpu.py` (same
size; Llama-style block, higher learning rate, stops at the first evaluation of the whole
validation split at or below the target); its time is the whole command, start-up,
compilation and the final test pass included. Rounds alternate which system goes first.
"""
import argparse
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from experiments.bench import train_vs_nanogpt as peer

_EVAL_LINE = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")
_CONFIG = "configs/shakespeare_fast_cpu.py"


def nanogpt_time(args, scratch: pathlib.Path) -> dict:
  """Seconds from start to the first evaluation at or below the target (None: never)."""
  nanogpt = pathlib.Path(args.nanogpt_dir).resolve()
  cmd = [os.path.abspath(args.torch_python), str(nanogpt / "train.py"),
         "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
         "--eval_iters=20", "--log_interval=1000", "--block_size=64", "--batch_size=12",
         "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
         "--lr_decay_iters=2000", "--dropout=0.0",
         f"--dataset={scratch / 'data' / 'shakespeare_char'}", f"--out_dir={scratch / 'out'}"]
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=nanogpt, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  reached, evals = None, []
  for line in proc.stdout:
    match = _EVAL_LINE.match(line)
    if match:
      evals.append((int(match[1]), float(match[2]), time.perf_counter() - start))
      if reached is None and float(match[2]) <= args.target:
        reached = evals[-1]
  proc.wait()
  total = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"nanoGPT exited {proc.returncode}")
  return {"seconds_to_target": reached and reached[2], "step": reached and reached[0],
          "val_loss": reached and reached[1], "total_seconds": total, "evals": evals}


def treadle_time(args, scratch: pathlib.Path, name: str) -> dict:
  workdir = scratch / name
  cmd = [sys.executable, "-m", "treadle.train.main", f"--config={_CONFIG}", f"--workdir={workdir}",
         f"--config.data.path={pathlib.Path(args.data).resolve()}",
         f"--config.train.target_val_loss={args.target}"]
  start = time.perf_counter()
  subprocess.run(cmd, check=True, capture_output=True, cwd=peer.REPO)
  seconds = time.perf_counter() - start
  summary = json.loads((workdir / "summary.json").read_text())
  reached = summary["outcome"] == "reached_target"
  return {"seconds_to_target": seconds if reached else None, "step": summary["step"],
          "val_loss": summary["best_val_loss"], "total_seconds": seconds}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--target", type=float, default=1.89)
  parser.add_argument("--data", default="../shared/data/tinyshakespeare/input.txt")
  parser.add_argument("--nanogpt_dir", default="../peers/nanoGPT")
  parser.add_argument("--torch_python", default="../peers/torchvenv/bin/python")
  args = parser.parse_args()
  load = [os.getloadavg()[0]]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    scratch = pathlib.Path(tmp)
    peer.prepare_nanogpt_data(pathlib.Path(args.data), scratch / "data" / "shakespeare_char")
    for r in range(args.rounds):
      order = ["nanogpt", "treadle"] if r % 2 == 0 else ["treadle", "nanogpt"]
      row = {}
      for system in order:
        row[system] = (nanogpt_time(args, scratch) if system == "nanogpt"
                       else treadle_time(args, scratch, f"treadle{r}"))
        print(system, {k: v for k, v in row[system].items() if k != "evals"}, flush=True)
      rows.append(row)
  load.append(os.getloadavg()[0])
  ratios = [r["treadle"]["seconds_to_target"] / r["nanogpt"]["seconds_to_target"]
            for r in rows
            if r["treadle"]["seconds_to_target"] and r["nanogpt"]["seconds_to_target"]]
  print(json.dumps({"date": datetime.date.today().isoformat(), "target": args.target,
                    "load_average_before_after": load, "rounds": rows,
                    "median_ratio_treadle_over_nanogpt": statistics.median(ratios) if ratios
                    else None}, indent=1))


if __name__ == "__main__":
  main()
