"""Two processes x 4 CPU devices (jax.distributed over loopback) == one process x 8 devices."""
import socket
import subprocess
import sys

import jax
import numpy as np

from tests import numerics
from tests.conftest import REPO, child_env, metric_rows, run_cli
from treadle.infer import sampler as sampler_lib
from treadle.train import config as config_lib
from treadle.train import state as state_lib

ARGS = ["--config", "configs/tiny.py", "--config.train.num_steps=3", "--config.train.log_every=1",
        "--config.train.eval_every=3", "--config.mesh.data=2", "--config.mesh.fsdp=2",
        "--config.mesh.tensor=2", "--config.mesh.rules=fsdp_tp",
        "--config.train.matmul_precision=highest"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  rows = metric_rows(workdir)
  return [r["train_loss"] for r in rows if "train_loss" in r]


def test_two_processes_match_one_process(tmp_path, text_file):
  single = tmp_path / "single"
  run_cli("treadle.train.main", *ARGS, "--workdir", single, f"--config.data.path={text_file}",
          "--config.mesh.cpu_devices=8")
  multi = tmp_path / "multi"
  port = _free_port()
  env = child_env()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "treadle.train.main", *ARGS, "--workdir", str(multi),
       f"--config.data.path={text_file}", "--config.mesh.cpu_devices=4",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      p.kill()  # never leave a process waiting on its peer
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "process 1 of 2" in outputs[1][1]
  expected = _losses(single)
  assert len(expected) == 3
  np.testing.assert_allclose(_losses(multi), expected, rtol=1e-5)
  assert sorted(p.name for p in (multi / "checkpoints").iterdir()) == ["3"]
  # the parameters after 3 steps, not only the losses on the way
  params = [jax.device_get(sampler_lib.Sampler.from_workdir(w, 3).params) for w in (single, multi)]
  cfg = config_lib.from_json(single / "config.json")
  initial = jax.device_get(state_lib.random_params(cfg.model, cfg.train.seed))
  assert not np.allclose(params[0]["blocks"][0]["attn"]["qkv"]["w"],
                         initial["blocks"][0]["attn"]["qkv"]["w"])  # they trained
  numerics.assert_trees_close(params[1], params[0], rtol=1e-5)
