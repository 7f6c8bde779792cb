"""Data benchmark: tokenize a generated multi-file JSONL corpus, then train the CPU recipe on it.

  python -m experiments.bench.data_bench --size_mb 1000 --work /tmp/data_bench

1. Writes `--files` JSONL files of documents (random passages of the default Shakespeare
   corpus, 200-4000 characters each) totalling `--size_mb` MB, unless they exist.
2. Fits a byte-level BPE (`--vocab_size`) on `data.tokenizer_sample_bytes` of it, then times
   `treadle-prepare` tokenizing the whole corpus with 2 workers and, pinned to one core
   (taskset), with 1; MB/s and tokens/s come from the cache's own log line; peak RSS is the
   largest process's (getrusage of children).
3. nanoGPT's prepare step on the same files and the same vocabulary on one core: tiktoken
   `encode_ordinary` per document + end of text into a uint16 array (nanoGPT
   data/openwebtext/prepare.py, minus HF datasets); tiktoken needs no download here because
   its ranks are built from the fitted BPE's merges. Skipped without tiktoken installed.
4. Trains configs/shakespeare_char_cpu.py for `--steps` steps on the corpus and on
   tinyshakespeare (`--reference`), interleaved over `--rounds`; reports peak RSS, median
   tokens/s of each run and the steps/s ratio of each round.
"""
import argparse
import json
import os
import pathlib
import random
import re
import sys
import time

from experiments.bench import machine

REPO = pathlib.Path(__file__).resolve().parents[2]



def generate(directory: pathlib.Path, size_mb: float, files: int, seed: int = 0) -> None:
  """Multi-file JSONL of passages of the default corpus (skipped if already complete)."""
  marker = directory / "COMPLETE"
  if marker.exists() and marker.read_text() == f"{size_mb} {files}":
    return
  from treadle.data import shakespeare
  source = shakespeare.corpus_path().read_text(encoding="utf-8")
  directory.mkdir(parents=True, exist_ok=True)
  rng = random.Random(seed)
  per_file = size_mb * 1e6 / files
  for f in range(files):
    with open(directory / f"part_{f:03d}.jsonl", "w", encoding="utf-8") as out:
      written = 0
      while written < per_file:
        start = rng.randrange(len(source) - 4000)
        line = json.dumps({"id": f"{f}-{written}", "text": source[start:start +
                           rng.randint(200, 4000)]}, ensure_ascii=False) + "\n"
        out.write(line)
        written += len(line.encode("utf-8"))
  marker.write_text(f"{size_mb} {files}")


def _run(cmd: list[str], env: dict | None = None, pin_core: bool = False
         ) -> machine.ProcessUsage:
  """Runs a command from the repository root: its wall and CPU time (on a shared machine CPU
  time depends much less on the other users), its largest process's peak RSS, its output."""
  usage = machine.measure_process(cmd, REPO, {**os.environ, **(env or {})},
                                  0 if pin_core else None)
  if usage.returncode:
    raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{usage.stderr[-3000:]}")
  return usage


def _mib(usage: machine.ProcessUsage) -> float:
  return usage.peak_rss_bytes / 2**20


def _prepare_args(corpus: pathlib.Path, cache: pathlib.Path, workers: int, vocab: int):
  return [sys.executable, "-m", "treadle.train.prepare", "--config",
          "configs/shakespeare_char_cpu.py", f"--config.data.path={corpus}",
          "--config.data.tokenizer=bpe", f"--config.data.vocab_size={vocab}",
          f"--config.data.cache_dir={cache}", f"--config.data.prepare_workers={workers}"]


def _tokenized(stderr: str) -> tuple[float, float]:
  """(MB/s, seconds) from the cache's 'tokenized ...' log line."""
  m = re.search(r"tokenized data: \d+ files, ([\d.]+) MB in ([\d.]+) s", stderr)
  return float(m.group(1)) / float(m.group(2)), float(m.group(2))


def tokenize(corpus: pathlib.Path, work: pathlib.Path, vocab: int) -> dict:
  import shutil
  out = {}
  fit_cache = work / "cache_fit"
  shutil.rmtree(fit_cache, ignore_errors=True)
  fit = _run(_prepare_args(corpus, fit_cache, 2, vocab))
  _, tok_s = _tokenized(fit.stderr)
  out["fit_and_tokenize_2_workers"] = {"seconds": fit.seconds, "peak_rss_mib": _mib(fit),
                                       "fit_seconds_approx": fit.seconds - tok_s}
  for workers, pin in ((2, False), (1, True)):
    cache = work / f"cache_{workers}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(fit_cache / "tokenizers", cache / "tokenizers")  # time tokenizing only
    env = {"RAYON_NUM_THREADS": "1"} if pin else None
    run = _run(_prepare_args(corpus, cache, workers, vocab), env, pin)
    mb_s, tok_seconds = _tokenized(run.stderr)
    (entry,) = (cache / "tokens").iterdir()
    tokens = json.loads((entry / "manifest.json").read_text())["tokens"]
    out[f"tokenize_{workers}_worker{'s' * (workers > 1)}"] = {
        "command_seconds": run.seconds, "tokenize_seconds": tok_seconds, "mb_per_s": mb_s,
        "tokens": tokens, "tokens_per_s": tokens / tok_seconds, "peak_rss_mib": _mib(run),
        "pinned_to_one_core": pin, "command_cpu_seconds": run.cpu_seconds,
        "tokens_per_cpu_second_whole_command": tokens / run.cpu_seconds}
  out["cache_entry_mib"] = sum(p.stat().st_size for p in entry.iterdir()) / 2**20
  record = next((fit_cache / "tokenizers").iterdir())
  out["tokenizer_record"] = str(record)
  return out


_TIKTOKEN = r'''
import json, pathlib, sys, time
import numpy as np, tiktoken
spec = json.loads(pathlib.Path(sys.argv[1]).read_text())["tokenizer"]
vocab = spec["hf"]["model"]["vocab"]
# GPT-2's byte <-> printable-character table, as HF's ByteLevel uses it
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
extra = [b for b in range(256) if b not in bs]
cs = bs + [256 + i for i in range(len(extra))]
bs = bs + extra
unbyte = {chr(c): b for b, c in zip(bs, cs)}
ranks = {bytes(unbyte[ch] for ch in tok): i for tok, i in vocab.items() if tok != "<|endoftext|>"}
gpt2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
enc = tiktoken.Encoding("treadle_bpe", pat_str=gpt2, mergeable_ranks=ranks,
                        special_tokens={"<|endoftext|>": vocab["<|endoftext|>"]})
start = time.perf_counter()
ids, mb = [], 0
for f in sorted(pathlib.Path(sys.argv[2]).glob("*.jsonl")):
  mb += f.stat().st_size / 1e6
  for line in open(f, encoding="utf-8"):
    t = enc.encode_ordinary(json.loads(line)["text"])
    t.append(enc.eot_token)
    ids.append(np.array(t, dtype=np.uint16))
arr = np.concatenate(ids)
arr.tofile(pathlib.Path(sys.argv[3]))
s = time.perf_counter() - start
print(json.dumps({"seconds": s, "mb_per_s": mb / s, "tokens": int(arr.size),
                  "tokens_per_s": arr.size / s}))
'''


def nanogpt_prepare(corpus: pathlib.Path, work: pathlib.Path, record: str) -> dict | None:
  try:
    import tiktoken  # noqa: F401
  except ImportError:
    return None
  run = _run([sys.executable, "-c", _TIKTOKEN, record, str(corpus), str(work / "nanogpt.bin")],
             pin_core=True)
  result = json.loads(_last_json(run.stdout))
  return {"peak_rss_mib": _mib(run), "pinned_to_one_core": True,
          "command_cpu_seconds": run.cpu_seconds,
          "tokens_per_cpu_second_whole_command": result["tokens"] / run.cpu_seconds, **result}


def _last_json(text: str) -> str:
  return [line for line in text.splitlines() if line.startswith("{")][-1]


def _train_command(data_path: str, work: pathlib.Path, name: str, steps: int) -> list[str]:
  return [sys.executable, "-m", "treadle.train.main", "--config",
          "configs/shakespeare_char_cpu.py", "--workdir", str(work / f"run_{name}"),
          f"--config.data.path={data_path}", f"--config.data.cache_dir={work / 'cache_char'}",
          f"--config.train.num_steps={steps}", f"--config.train.eval_every={steps}",
          "--config.train.eval_batches=20", f"--config.train.checkpoint_every={steps}"]


def train_once(data_path: str, work: pathlib.Path, name: str, steps: int) -> dict:
  """One timed run from an empty workdir; the token cache is already filled."""
  import shutil
  cmd = _train_command(data_path, work, name, steps)
  shutil.rmtree(work / f"run_{name}", ignore_errors=True)
  run = _run(cmd)
  rows = [json.loads(x) for x in (work / f"run_{name}" / "metrics.jsonl").read_text()
          .splitlines()]
  rates = sorted(r["tokens_per_second"] for r in rows if "tokens_per_second" in r)[1:]
  median = rates[len(rates) // 2]
  return {"seconds": run.seconds, "peak_rss_mib": _mib(run), "cpu_seconds": run.cpu_seconds,
          "median_tokens_per_s": median, "steps_per_s": median / (12 * 64)}


def train(corpus: str, reference: str, work: pathlib.Path, steps: int, rounds: int) -> dict:
  """The CPU recipe on the corpus and on tinyshakespeare, interleaved over `rounds` so both
  see the same machine; steps/s ratio corpus / tinyshakespeare per round."""
  for data_path, name in ((corpus, "corpus"), (reference, "tiny")):
    cmd = _train_command(data_path, work, name, steps)
    _run([sys.executable, "-m", "treadle.train.prepare", *cmd[3:5], *cmd[7:9]])  # fills the cache
  out = {"corpus": [], "tinyshakespeare": []}
  for _ in range(rounds):
    out["corpus"].append(train_once(corpus, work, "corpus", steps))
    out["tinyshakespeare"].append(train_once(reference, work, "tiny", steps))
  out["steps_per_s_ratio_corpus_over_tiny"] = [
      c["steps_per_s"] / t["steps_per_s"] for c, t in zip(out["corpus"], out["tinyshakespeare"])]
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size_mb", type=float, default=1000)
  parser.add_argument("--files", type=int, default=16)
  parser.add_argument("--vocab_size", type=int, default=4096)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--rounds", type=int, default=2, help="interleaved training rounds")
  parser.add_argument("--work", default="/tmp/treadle_data_bench")
  parser.add_argument("--reference", default=_tinyshakespeare(),
                      help="tinyshakespeare input.txt: the steps/s reference")
  parser.add_argument("--skip", default="", help="comma list of: tokenize,nanogpt,train")
  args = parser.parse_args()
  work = pathlib.Path(args.work)
  corpus = work / "corpus"
  start = time.perf_counter()
  generate(corpus, args.size_mb, args.files)
  results = {"size_mb": args.size_mb, "files": args.files,
             "generate_seconds": time.perf_counter() - start, "cpu": _cpu()}
  skip = set(args.skip.split(","))
  if "tokenize" not in skip:
    results["treadle"] = tokenize(corpus, work, args.vocab_size)
    if "nanogpt" not in skip:
      results["nanogpt_tiktoken"] = nanogpt_prepare(corpus, work,
                                                    results["treadle"]["tokenizer_record"])
  if "train" not in skip:
    results["train"] = train(str(corpus), args.reference, work, args.steps, args.rounds)
  print(json.dumps(results, indent=1))  # also the record in experiments/bench/README.md


def _tinyshakespeare() -> str:
  """../shared/data/tinyshakespeare/input.txt beside the repository or its worktree folder."""
  for shared in (REPO.parent / "shared", REPO.parent.parent / "shared"):
    if (shared / "data" / "tinyshakespeare" / "input.txt").exists():
      return str(shared / "data" / "tinyshakespeare" / "input.txt")
  return ""


def _cpu() -> str:
  for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
      return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
  return "unknown"


if __name__ == "__main__":
  main()
