"""An MoE language model end to end: expert-parallel training resumes bitwise, its router
metrics reach metrics.jsonl and TensorBoard, and the sampler decodes from its checkpoint."""
import pathlib
import struct

import jax
import pytest
from tensorboardX.proto import event_pb2

from tests.conftest import metric_rows, run_cli
from tests.serve import test_hardening
from tests.train import test_resume as resume
from treadle.infer import sampler as sampler_lib

N = resume.N
MOE = ["--config.model.num_experts=4", "--config.model.experts_per_token=2",
       "--config.model.moe_hidden_dim=48", "--config.model.capacity_factor=1.5",
       "--config.model.router_z_loss_coef=0.001", "--config.mesh.expert=2"]


def _train(workdir, text_file, steps):
  return run_cli("treadle.train.main", *resume.COMMON, *MOE, "--workdir", workdir,
                 f"--config.data.path={text_file}", f"--config.train.num_steps={steps}",
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})


@pytest.fixture(scope="module")
def straight(tmp_path_factory, text_file):
  workdir = tmp_path_factory.mktemp("moe_straight") / "run"
  _train(workdir, text_file, 2 * N)
  return workdir


def test_expert_parallel_moe_resumes_bitwise(straight, tmp_path, text_file):
  resumed = tmp_path / "run"
  _train(resumed, text_file, N)
  _train(resumed, text_file, 2 * N)
  resume._assert_same_run(straight, resumed)


def _tensorboard_tags(workdir: pathlib.Path) -> set[str]:
  """Scalar tags of the run's event files (TFRecord framing: length, crc, event, crc)."""
  tags = set()
  for path in (workdir / "tensorboard").glob("events.out.tfevents.*"):
    data = path.read_bytes()
    at = 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      tags.update(v.tag for v in event.summary.value)
      at += 12 + length + 4
  return tags


def test_router_metrics_are_logged(straight):
  rows = [r for r in metric_rows(straight) if "train_loss" in r]
  last = rows[-1]
  loads = {k: v for k, v in last.items() if k.startswith("train_expert_load/")}
  assert len(loads) == 2 * 4  # two MoE blocks x four experts
  for layer in (0, 1):  # shares of one block's assignments
    assert sum(loads[f"train_expert_load/layer{layer}/e{e}"] for e in range(4)) == \
        pytest.approx(1.0, abs=1e-5)
  assert 0 <= last["train_moe_dropped"] < 1 and last["train_moe_aux_loss"] > 0
  # train_loss = cross entropy + the router losses, each logged on its own
  router = 0.01 * last["train_moe_aux_loss"] + 0.001 * last["train_moe_z_loss"]
  assert last["train_loss"] == pytest.approx(last["train_cross_entropy"] + router, rel=1e-5)
  evals = [r for r in metric_rows(straight) if "val_loss" in r]
  assert "val_expert_load/layer1/e3" in evals[-1] and "val_cross_entropy" not in evals[-1]
  tags = _tensorboard_tags(straight)
  assert {"train_expert_load/layer0/e0", "train_moe_aux_loss", "train_moe_dropped",
          "val_moe_z_loss"} <= tags


def test_sampler_and_server_decode_the_moe_checkpoint(straight):
  """Greedy text of one prompt: alone, batched with another, and through treadle-serve's
  slots (each token's experts depend on that token only: decoding is dropless)."""
  sampler = sampler_lib.Sampler.from_workdir(straight, mesh_shape=(1, 1, 1),
                                             devices=jax.devices()[:1])
  assert sampler.cfg.model.num_experts == 4
  alone = sampler.generate(["ROMEO:"], max_new_tokens=12, temperature=0.0)[0].text
  batched = sampler.generate(["ROMEO:", "To be, or"], max_new_tokens=12, temperature=0.0)
  assert len(alone) > 0 and batched[0].text == alone
  server = test_hardening.InProcess(straight)
  try:
    reply = server.greedy("ROMEO:", max_tokens=12)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["text"] == alone
  finally:
    server.close()
