"""Comparisons shared by the tests."""
import jax
import numpy as np


def assert_trees_close(actual, expected, rtol: float = 1e-5) -> None:
  """Every leaf within `rtol` in relative L2 norm (per tensor).

  Per tensor rather than per element: Adam divides by sqrt(v), so an element whose gradient
  is ~0 turns reduction-order rounding (sharded vs single-device sums) into a visible update
  difference in that one element while the tensor as a whole agrees to ~1e-6.
  """
  def check(path, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (jax.tree_util.keystr(path), a.shape, b.shape)
    err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
    assert err <= rtol, f"{jax.tree_util.keystr(path)}: relative error {err:.2e} > {rtol}"
  jax.tree_util.tree_map_with_path(check, actual, expected)
