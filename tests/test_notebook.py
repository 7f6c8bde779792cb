"""End to end: the real CLI trains a tiny run, then experiments/notebooks/sampling.ipynb runs
top to bottom against it in a fresh Jupyter kernel."""
import pathlib
import subprocess
import sys

import nbclient
import nbformat
import pytest
from jupyter_client import kernelspec

from tests.conftest import child_env

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "experiments" / "notebooks" / "sampling.ipynb"
SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
KERNEL = "python3"


def _synthetic_text(path: pathlib.Path) -> pathlib.Path:
  """~300 KB of play-like dialogue with every character the notebook's prompts use."""
  speakers = ["ROMEO", "JULIET", "First Citizen", "KING HENRY", "MERCUTIO"]
  lines = ["What light through yonder window breaks, my lord?",
           "Speak, speak; we are resolved rather to die than to famish.",
           "O, that I were a glove upon that hand, that I might touch that cheek!",
           "Now is the winter of our discontent made glorious summer by this sun.",
           "A plague on both your houses! They have made worms' meat of me.",
           "Give me my sword, and bring the horses quickly; the night grows old."]
  speeches = [f"{speakers[i % len(speakers)]}:\n{lines[i % len(lines)]}\n"
              f"{lines[(i * 7 + 3) % len(lines)]}\n\n" for i in range(1500)]
  path.write_text("".join(speeches), encoding="utf-8")
  return path


def _ensure_kernelspec() -> None:
  """The notebook runs in the kernel named "python3"; install it into this interpreter's
  prefix if no Jupyter data directory provides one."""
  if KERNEL not in kernelspec.find_kernel_specs():
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix",
                    "--name", KERNEL], check=True, capture_output=True, timeout=120)


def _train_tiny_run(tmp_path: pathlib.Path) -> pathlib.Path:
  text = SHAKESPEARE if SHAKESPEARE.exists() else _synthetic_text(tmp_path / "input.txt")
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "treadle.train.main", "--config", "configs/tiny.py",
       "--workdir", str(workdir), "--config.data.path", str(text),
       "--config.data.cache_dir", str(tmp_path / "cache")],
      # the trainer picks its own device layout (one per core), as the README's run does
      cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _outputs(nb) -> tuple[str, list[dict]]:
  """(all printed text, error outputs) over the code cells."""
  text, errors = [], []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out["output_type"] == "error":
        errors.append(out)
      elif out["output_type"] == "stream":
        text.append(out["text"])
      else:
        text.append(f"<{' '.join(sorted(out.get('data', {})))}>")  # rich output: its types
  return "".join(text), errors


@pytest.mark.slow
@pytest.mark.processes
def test_sampling_notebook_runs_on_a_fresh_run(tmp_path, monkeypatch):
  workdir = _train_tiny_run(tmp_path)
  _ensure_kernelspec()
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code_cells = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is None and not c.outputs for c in code_cells), \
      "notebook is stored with outputs: clear them before committing"
  assert "TREADLE_WORKDIR" in code_cells[0].source

  # The kernel inherits this process's environment.
  monkeypatch.setenv("TREADLE_WORKDIR", str(workdir))
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name=KERNEL,
                                   resources={"metadata": {"path": str(REPO_ROOT)}})
  client.execute()  # raises CellExecutionError on the first failing cell

  text, errors = _outputs(nb)
  assert not errors, errors
  assert f"run directory: {workdir}" in text
  assert "loaded checkpoint step 20" in text
  assert "val loss by step:" in text and "step     20  val_loss" in text
  assert "image/png" in text  # matplotlib (a dependency) drew the loss curves inline
  assert text.count("=== prompt") == 3
  assert "stream matches generate: True" in text
  for header in ("temperature 0.0", "temperature 0.5", "temperature 1.0",
                 "top_p 1.0", "top_p 0.9", "top_p 0.5"):
    assert header in text
  assert all(c.execution_count is not None for c in code_cells)
