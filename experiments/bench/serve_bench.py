"""treadle-serve under load on loopback: tokens/s and latency at 1, 8 and 32 clients, for
--max_batch 32 and --max_batch 1 side by side in one run (the two servers up together, their
phases alternating, so both see the same machine load).

Model: the shakespeare_char size (6 layers, 6 heads, 384 wide, context 256, vocab 65), fp32,
random parameters written as a run directory (speed does not depend on training), served by
the real `treadle-serve` in its own process. Each client sends one /v1/completions request
at a time (temperature 0.8, top_k 200 as nanoGPT's sample.py; `max_tokens` new tokens, no
stop) until the phase's request count is reached. Latency = request sent to whole response
received; tokens/s = all new tokens of the phase / its wall time. The servers compile at
start-up, before any timing. Printed: one client at --max_batch 32 / at --max_batch 1 (the
step buckets: one client should not pay for 32 slots) and 32 clients / 1 client.

  .venv/bin/python -m experiments.bench.serve_bench [--max_tokens 64] [--requests 1:4,8:16,32:64]
      [--max_batch 32] [--compare_batch 1]
"""
import argparse
import asyncio
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx

from experiments.bench import machine

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # nanoGPT's 65
PROMPTS = ["ROMEO:", "JULIET:\nO", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "KING RICHARD III:\nNow is the winter of our discontent", "To be, or not to be",
           "MENENIUS:\nWhat work's, my countrymen, in hand?", "Good night", "O"]


def write_random_run(workdir: pathlib.Path, seed: int) -> None:
  """A run directory (config, tokenizer, one checkpoint) holding random parameters."""
  import jax
  from treadle.configs import shakespeare_char
  from treadle.data import tokenizers
  from treadle.train import checkpoint
  from treadle.train import config as config_lib
  from treadle.train import state as state_lib
  c = shakespeare_char.get_config()
  c.model.vocab_size, c.model.max_seq_len, c.model.dropout = len(CHARS), c.data.seq_len, 0.0
  run = config_lib.split(c)
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps(run.to_dict()))
  tokenizers.save(tokenizers.CharTokenizer(CHARS, eot=False), workdir)  # nanoGPT's 65
  params = state_lib.random_params(run.model, seed)
  state = state_lib.TrainState(jax.numpy.zeros((), "int32"), params, {},
                               jax.random.key_data(jax.random.key(seed)))
  mgr = checkpoint.manager(workdir, async_save=False)
  checkpoint.save(mgr, 0, state, None, run.to_dict())
  mgr.wait_until_finished()
  mgr.close()


def start_server(workdir: pathlib.Path, max_batch: int) -> tuple[subprocess.Popen, str]:
  proc = subprocess.Popen([sys.executable, "-m", "treadle.serve.main", f"--workdir={workdir}",
                           "--port=0", f"--max_batch={max_batch}"],
                          stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if match:  # keep reading its log so the pipe never fills
      threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
      return proc, match.group(1)
  raise RuntimeError(f"treadle-serve exited {proc.wait()} before serving")


async def phase(url: str, clients: int, requests: int, max_tokens: int) -> dict:
  """`clients` concurrent clients send `requests` requests in all, one at a time each."""
  latencies, tokens, sent = [], 0, 0
  body = {"max_tokens": max_tokens, "temperature": 0.8, "top_k": 200, "ignore_eos": True}

  async def client(http: httpx.AsyncClient) -> None:
    nonlocal tokens, sent
    while sent < requests:
      sent += 1
      start = time.perf_counter()
      r = await http.post(f"{url}/v1/completions",
                          json={**body, "prompt": PROMPTS[sent % len(PROMPTS)], "seed": sent})
      r.raise_for_status()
      latencies.append(time.perf_counter() - start)
      tokens += r.json()["usage"]["completion_tokens"]

  async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
    start = time.perf_counter()
    await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - start
  latencies.sort()
  return {"clients": clients, "requests": requests, "new_tokens": tokens, "seconds": wall,
          "tokens_per_second": tokens / wall, "p50_s": statistics.median(latencies),
          "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--max_tokens", type=int, default=64)
  p.add_argument("--requests", default="1:4,8:16,32:64",
                 help="clients:requests pairs, one phase each")
  p.add_argument("--max_batch", type=int, default=32)
  p.add_argument("--compare_batch", type=int, default=1,
                 help="a second server's --max_batch, measured alongside")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", action="store_true")
  return p.parse_args()


def main() -> None:
  args = parse_args()
  phases = [tuple(map(int, pair.split(":"))) for pair in args.requests.split(",")]
  sizes = [args.max_batch, args.compare_batch]
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / "random_shakespeare_char"
    write_random_run(workdir, args.seed)
    servers = [start_server(workdir, size) for size in sizes]
    try:
      for _, url in servers:
        asyncio.run(phase(url, 1, 1, 4))  # one request first: connections, first prefill
      load = os.getloadavg()[0]
      results = {size: [] for size in sizes}
      for c, n in phases:  # alternating: both servers see the same load
        for size, (_, url) in zip(sizes, servers):
          results[size].append(asyncio.run(phase(url, c, n, args.max_tokens)))
    finally:
      for proc, _ in servers:
        proc.terminate()
        proc.wait(timeout=120)
  out = {"date": datetime.date.today().isoformat(), "machine": machine.cpu_name(),
         "cpus": os.cpu_count(), "max_tokens": args.max_tokens,
         "load_average_before_after": (round(load, 2), round(os.getloadavg()[0], 2)),
         "phases": {f"max_batch_{size}": r for size, r in results.items()}}
  if args.json:
    print(json.dumps(out, indent=1))
    return
  print(f"treadle-serve, shakespeare_char size (random params), {args.max_tokens} new tokens "
        f"per request; {out['machine']} ({out['cpus']} CPUs), {out['date']}")
  print(f"{'max_batch':>9} {'clients':>7} {'requests':>8} {'tokens/s':>9} {'p50 s':>7} "
        f"{'p99 s':>7}")
  for size in sizes:
    for r in results[size]:
      print(f"{size:9d} {r['clients']:7d} {r['requests']:8d} {r['tokens_per_second']:9.1f} "
            f"{r['p50_s']:7.2f} {r['p99_s']:7.2f}")
  big, small = results[args.max_batch], results[args.compare_batch]
  print(f"  {big[0]['clients']} client(s), max_batch {args.max_batch} / max_batch "
        f"{args.compare_batch}: {big[0]['tokens_per_second'] / small[0]['tokens_per_second']:.2f}x"
        " tokens/s")
  for r in big[1:]:
    print(f"  max_batch {args.max_batch}: {r['clients']} clients / {big[0]['clients']}: "
          f"{r['tokens_per_second'] / big[0]['tokens_per_second']:.1f}x tokens/s")
  print(f"load average before/after: {out['load_average_before_after']}")


if __name__ == "__main__":
  main()
