"""The same multiple-choice task scored by lm-evaluation-harness through treadle-serve gives
the accuracy eval.tasks computed inside the training loop (the Python 3.11 leg, where
lm-eval is installed with the HF test extra)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, child_env, metric_rows
from tests.serve.conftest import ServerProcess
from tests.train import test_downstream as downstream_test
from treadle.data import tokenizers
from treadle.hf import tokenizer_files

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

TASK_YAML = """task: mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_lm_eval_through_the_server_scores_what_the_loop_scored(scored_run_files):
  workdir, root = scored_run_files
  in_loop = [r for r in metric_rows(workdir) if "eval/mc/acc" in r][-1]
  tokenizer_dir = root / "tokenizer"
  tokenizer_dir.mkdir()
  tokenizer_files.save(tokenizers.load(workdir), tokenizer_dir, downstream_test.WINDOW)
  (root / "tasks").mkdir()
  (root / "tasks" / "mc.yaml").write_text(TASK_YAML.format(data=root / "mc.jsonl"))
  server = ServerProcess(workdir, "--max_batch=8")
  try:
    env = child_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                    HF_DATASETS_CACHE=str(root / "datasets"), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
         f"model=tiny,base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
         f"tokenizer={tokenizer_dir},max_length={downstream_test.WINDOW},num_concurrent=1",
         "--include_path", str(root / "tasks"), "--tasks", "mc",
         "--output_path", str(root / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  finally:
    server.stop()
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = [json.loads(p.read_text()) for p in (root / "out").rglob("results_*.json")]
  scores = results[0]["results"]["mc"]
  assert scores["acc,none"] == pytest.approx(in_loop["eval/mc/acc"], abs=1e-9)
  assert scores["acc_norm,none"] == pytest.approx(in_loop["eval/mc/acc_norm"], abs=1e-9)


@pytest.fixture(scope="module")
def scored_run_files(scored_run):
  workdir, _ = scored_run
  return workdir, workdir.parent


scored_run = downstream_test.scored_run
