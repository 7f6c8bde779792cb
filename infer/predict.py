"""treadle-predict: classify images with a trained image-classification run.

  treadle-predict --workdir DIR --input FILE [--input FILE ...] [--step N|best] [--json]

FILE is a .npy array of raw pixels ([H, W] or [N, H, W], the dataset's pixel range, e.g.
0..16 for digits) or an image file (PNG/JPEG: converted to grey, inverted if the
background is light, resized to the training size and scaled to the pixel range).
Prints one line per image: label, probability. Bad input: one-line error, exit code 2.
"""
import json

from absl import flags

from treadle.infer import predictor as predictor_lib
from treadle.common import entry

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of an image-classification run.")
_INPUT = flags.DEFINE_multi_string("input", None, ".npy or image file (repeatable).")
_STEP = flags.DEFINE_string("step", None, "Checkpoint step: a number, 'best' or latest (default).")
_JSON = flags.DEFINE_bool("json", False, "Print JSON with the label, probability and all classes.")


def main(argv) -> None:
  del argv
  if not _WORKDIR.value or not _INPUT.value:
    entry.fail("--workdir and --input are required")
  from treadle.common import logs
  logs.setup()
  with entry.one_line_errors():
    predictor = predictor_lib.Predictor.from_workdir(_WORKDIR.value,
                                                     entry.checkpoint_step(_STEP.value))
    for path in _INPUT.value:
      raw = predictor_lib.load_input(path, predictor.preprocess)
      try:
        results = predictor.predict(raw)
      except ValueError as e:
        raise ValueError(f"--input {path!r}: {e}") from None
      for i, result in enumerate(results):
        if _JSON.value:
          print(json.dumps({"input": path, "index": i, **result}))
        else:
          print(f"{path}[{i}]: {result['label']} ({result['probability']:.1%})")


def run() -> None:
  entry.run(main)


if __name__ == "__main__":
  run()
