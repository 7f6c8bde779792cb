"""Predictor: a trained image-classification run, as a library (notebooks, scripts)."""
import pathlib

import numpy as np


class Predictor:
  """Library API: `Predictor.from_workdir(DIR).predict(raw_images)`."""

  def __init__(self, cfg, preprocess, params, step: int):
    self.cfg, self.preprocess, self.params, self.step = cfg, preprocess, params, step

  @classmethod
  def from_workdir(cls, workdir, step: int | str | None = None) -> "Predictor":
    import jax
    from treadle.data import images
    from treadle.train import checkpoint
    from treadle.train import config as config_lib
    workdir = pathlib.Path(workdir)
    cfg = config_lib.from_run(workdir)
    if cfg.task != "classify":
      raise ValueError(f"{str(workdir)!r} is a {cfg.task!r} run, not an image classifier")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # a small model
    params, step = checkpoint.load_params(
        workdir, step, cfg.model, lambda abstract, _: jax.tree.map(lambda _: device, abstract))
    return cls(cfg, images.Preprocess.load(workdir), params, step)

  def predict(self, raw_NHW: np.ndarray) -> list[dict]:
    """Raw pixels [N, H, W] -> [{label, probability, probabilities}] per image."""
    from treadle.train.tasks import image as image_task
    shape = self.preprocess.image_shape
    if raw_NHW.ndim != 3 or raw_NHW.shape[1:] != tuple(shape):
      raise ValueError(f"expected images of shape {tuple(shape)}, got {raw_NHW.shape[1:]}")
    bad = [i for i, image in enumerate(raw_NHW) if not np.isfinite(image).all()]
    if bad:  # a NaN pixel makes every probability NaN: no label to report
      raise ValueError(f"image(s) {bad[:10]} hold non-finite pixel values (NaN or inf)")
    probs = image_task.predict_probabilities(self.cfg.model, self.params,
                                             self.preprocess.normalize(raw_NHW))
    labels = self.preprocess.labels
    return [{"label": labels[int(p.argmax())], "probability": float(p.max()),
             "probabilities": dict(zip(labels, map(float, p)))} for p in probs]


def load_input(path: str, preprocess) -> np.ndarray:
  """A file -> raw pixels [N, H, W] in the dataset's pixel range."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"--input: no such file {path!r}")
  if file.suffix == ".npy":
    try:
      array = np.load(file).astype(np.float32)
    except (OSError, ValueError, TypeError, EOFError) as e:  # not .npy, truncated, pickled, ...
      raise ValueError(f"--input {path!r}: not a readable .npy array of numbers "
                       f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    array = array[None] if array.ndim == 2 else array
    if array.ndim != 3 or array.shape[1:] != tuple(preprocess.image_shape):
      raise ValueError(f"--input {path!r}: shape {array.shape} is not "
                       f"{tuple(preprocess.image_shape)} or [N, *{tuple(preprocess.image_shape)}]")
    return array
  return _image_file(file, preprocess)


def _image_file(file: pathlib.Path, preprocess) -> np.ndarray:
  from matplotlib import image as mpimg
  try:
    pixels = mpimg.imread(file).astype(np.float32)
  except Exception as e:  # matplotlib raises many types for unreadable files
    raise ValueError(f"--input {str(file)!r}: not a readable image ({e})") from None
  if pixels.ndim == 3:
    pixels = pixels[..., :3].mean(axis=-1)  # drop alpha, average colour to grey
  pixels = pixels / pixels.max() if pixels.max() > 1 else pixels
  if pixels.mean() > 0.5:
    pixels = 1.0 - pixels  # digits are light strokes on a dark background
  h, w = preprocess.image_shape
  if pixels.shape[0] < h or pixels.shape[1] < w:
    raise ValueError(f"--input {str(file)!r}: {pixels.shape} is smaller than {(h, w)}")
  # area resize: average blocks (cropping the edges that don't divide evenly)
  bh, bw = pixels.shape[0] // h, pixels.shape[1] // w
  blocks = pixels[:bh * h, :bw * w].reshape(h, bh, w, bw).mean(axis=(1, 3))
  return (blocks * preprocess.pixel_max)[None]
