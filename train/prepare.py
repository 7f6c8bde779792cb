"""treadle-prepare: fit the tokenizer and fill the token cache ahead of training.

  treadle-prepare --config configs/NAME.py [--config.data.path=... --config.KEY=VALUE ...]

Run it where CPUs are cheap (say a CPU node before a GPU job): `treadle-train` with the same
config and `data.cache_dir` then reads the cache instead of tokenizing. Exit codes: 0 done,
2 bad input (config, missing/empty/malformed data); nothing is written on error.
"""
import logging
import time

from ml_collections import config_flags

from treadle.common import entry

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).",
                                          lock_config=True)


def _report(data, seconds: float) -> str:
  lines = [f"tokenizer: {data.tokenizer.kind}, vocab {data.tokenizer.vocab_size}; "
           f"ready in {seconds:.1f} s"]
  for i, name in enumerate(data.train.names):
    views = [s.views[i] for s in (data.train, data.val, data.test)]
    store = views[0].store
    lines.append(f"{name}: {store.num_documents} documents, {store.num_tokens} tokens "
                 f"(train {views[0].num_tokens}, val {views[1].num_tokens}, test "
                 f"{views[2].num_tokens}) in {store.path}")
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  if _CONFIG.value is None:
    entry.fail("--config is required")
  from treadle.data import corpus  # noqa: E402  (after flags, like the other entry points)
  from treadle.train import config as config_lib
  from treadle.common import logs
  logs.setup()
  config = entry.config_file(_CONFIG, ("data",))
  with entry.one_line_errors(ValueError, FileNotFoundError, RuntimeError):
    cfg = config_lib.split(config)
    if cfg.task != "lm":
      raise ValueError(f"task={cfg.task!r}: treadle-prepare tokenizes text corpora (task=lm)")
    start = time.perf_counter()
    data = corpus.load(cfg.data)
  print(_report(data, time.perf_counter() - start))
  logging.getLogger("treadle").info("token cache ready")


def run() -> None:
  """Console-script entry point."""
  entry.run(main)


if __name__ == "__main__":
  run()
