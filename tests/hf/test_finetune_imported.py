"""An imported model is a run like any other: LoRA fine-tuning on local text with its own
HF tokenizer (configs/imported.py), then sampling. Needs neither torch nor transformers."""

import numpy as np

from tests.conftest import metric_rows, run_cli
from tests.hf import synthetic
from treadle.hf import importer
from treadle.infer import sampler as sampler_lib


def _train_losses(workdir) -> list[float]:
  rows = metric_rows(workdir)
  return [r["train_loss"] for r in rows if "train_loss" in r]


def test_lora_fine_tune_of_an_imported_llama(tmp_path, text_file):
  text = text_file.read_text()
  hf_dir = synthetic.write(tmp_path / "hf", synthetic.LLAMA_CONFIG, text)
  importer.import_model(hf_dir, tmp_path / "imported")
  corpus = tmp_path / "sonnet.txt"
  corpus.write_text(text[:60_000])
  tuned = tmp_path / "tuned"
  run_cli("treadle.train.main", "--config", f"configs/imported.py:{tmp_path / 'imported'}",
          "--workdir", tuned, f"--config.data.path={corpus}", "--config.data.seq_len=32",
          "--config.finetune.lora_rank=8", "--config.finetune.lora_targets=attn,mlp",
          "--config.optimizer.learning_rate=3e-2", "--config.optimizer.warmup_steps=2",
          "--config.train.num_steps=20", "--config.train.batch_size=8",
          "--config.train.log_every=1", "--config.train.eval_every=20",
          "--config.train.eval_batches=2", "--config.train.checkpoint_every=20")
  losses = _train_losses(tuned)
  assert len(losses) == 20
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
  sampler = sampler_lib.Sampler.from_workdir(tuned)
  assert sampler.cfg.model.lora_rank == 8 and sampler.tokenizer.kind == "hf"
  completion = sampler.generate("ROMEO:", max_new_tokens=16, temperature=0.0, ignore_eos=True)[0]
  assert len(completion.token_ids) == 16 and completion.text


def test_imported_config_file_needs_a_run(tmp_path):
  proc = run_cli("treadle.train.main", "--config", f"configs/imported.py:{tmp_path / 'none'}",
                 "--workdir", tmp_path / "run", check=False)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and "no config.json" in errors[0], proc.stderr
  assert not (tmp_path / "run").exists()
