"""Coordinate check of mup vs sp: mean |activation| per layer over the first training steps,
for widths 64..1024 (treadle's decoder, AdamW, Shakespeare characters).

Step t's activations are those of the forward pass after t updates (the first forward pass, at
init, is left out: with mup's 1/m readout its logits shrink as 1/sqrt(m) there, by design);
each width trains from --seeds inits (averaged: one init's fluctuations are largest at small width)
on the same batches. Under mup (base width 64) every
layer's activation size should stay put as the width grows 16x; under sp it grows.

Command (2 shared cores: about 12 minutes):
  .venv/bin/python experiments/mup/coord_check.py --text ../shared/data/tinyshakespeare/input.txt
Writes experiments/mup/coord_check.png and coord_check.json (the numbers), prints the table.
"""
import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib import figure

from treadle.model import gpt
from treadle.train import config as config_lib
from treadle.train import optimizer
from treadle.train import state as state_lib

HERE = pathlib.Path(__file__).parent
WIDTHS = (64, 128, 256, 512, 1024)
STEPS = 3
BASE = 64


def activations(model: gpt.Decoder, tokens_BT) -> list[jax.Array]:
  """Mean |x| of the embedding output, each block's output and the logits."""
  T = tokens_BT.shape[1]
  positions = jnp.broadcast_to(jnp.arange(T), tokens_BT.shape)
  x = model.token_embed[...][tokens_BT] + model.position_embed[...][positions]
  sizes = [jnp.abs(x).mean()]
  for block in model.blocks:
    x, _, _ = block(x, positions)
    sizes.append(jnp.abs(x).mean())
  sizes.append(jnp.abs(model._logits(model.ln_f(x))[..., :model.cfg.vocab_size]).mean())
  return sizes


def run(width: int, parametrization: str, batches, vocab: int, lr: float, seed: int
        ) -> np.ndarray:
  """[steps, layers] mean |activation| of one width and init seed."""
  cfg = config_lib.section("model", vocab_size=vocab, max_seq_len=batches.shape[-1] - 1,
                           num_layers=4, num_heads=4, embed_dim=width,
                           parametrization=parametrization, mup_base_width=BASE)
  # no global-norm clipping: the norm sums over every parameter, so it grows with the width and
  # clips wide models more (with clipping at 1.0 the 64-wide model stood out, 1.8x larger)
  opt = config_lib.section("optimizer", learning_rate=lr, warmup_steps=0, weight_decay=0.0,
                           grad_clip_norm=0.0)
  graphdef, _, specs = state_lib.model_graph(cfg)
  tx = optimizer.build(opt, 100, specs,
                       1.0 / cfg.width_mult if parametrization == "mup" else None)
  params = state_lib.random_params(cfg, seed)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, tokens):
    def loss_fn(p):
      model = nnx.merge(graphdef, p)
      logits, _ = model(tokens[:, :-1])
      return gpt.cross_entropy(logits, tokens[:, 1:]), activations(model, tokens[:, :-1])
    (_, sizes), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(jnp.add, params, updates), opt_state, jnp.stack(sizes)

  rows = []
  for t in range(STEPS + 1):
    params, opt_state, sizes = step(params, opt_state, batches[t])
    rows.append(np.asarray(sizes))
  return np.stack(rows[1:])  # after 1..STEPS updates


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--text", required=True, help="a UTF-8 text file (characters)")
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--seeds", type=int, default=3, help="inits averaged per width")
  args = parser.parse_args()
  text = pathlib.Path(args.text).read_text(encoding="utf-8")
  chars = sorted(set(text))
  ids = np.array([chars.index(c) for c in text[:200_000]], np.int32)
  rng = np.random.default_rng(0)
  starts = rng.integers(0, len(ids) - 65, (STEPS + 1, 16))
  batches = np.stack([[ids[s:s + 65] for s in row] for row in starts])
  results = {p: {w: np.mean([run(w, p, batches, len(chars), args.lr, seed)
                              for seed in range(args.seeds)], axis=0) for w in WIDTHS}
             for p in ("sp", "mup")}
  names = ["embed"] + [f"block{i}" for i in range(4)] + ["logits"]
  table = {p: {str(w): r.tolist() for w, r in by_w.items()} for p, by_w in results.items()}
  (HERE / "coord_check.json").write_text(json.dumps(
      {"lr": args.lr, "seeds": args.seeds, "widths": WIDTHS, "layers": names, "mean_abs": table}, indent=1))
  fig = figure.Figure(figsize=(14, 6), layout="constrained")
  axes_grid = fig.subplots(2, STEPS, sharey="row")
  for row, p in enumerate(("sp", "mup")):
    for t in range(STEPS):
      ax = axes_grid[row, t]
      for layer, name in enumerate(names):
        ax.plot(WIDTHS, [results[p][w][t, layer] for w in WIDTHS], marker="o", label=name)
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      ax.set_title(f"{p}, step {t + 1}")
      ax.set_xlabel("width (embed_dim)")
  axes_grid[0, 0].set_ylabel("mean |activation|")
  axes_grid[1, 0].set_ylabel("mean |activation|")
  axes_grid[0, -1].legend(fontsize=8)
  fig.savefig(HERE / "coord_check.png", dpi=90)
  print(f"max/min of mean |activation| across widths {WIDTHS[0]}..{WIDTHS[-1]} (lr {args.lr})")
  print(f"{'layer':8} " + "  ".join(f"{p} t{t + 1}" for p in ("sp", "mup") for t in range(STEPS)))
  for layer, name in enumerate(names):
    spread = [max(results[p][w][t, layer] for w in WIDTHS) /
              min(results[p][w][t, layer] for w in WIDTHS)
              for p in ("sp", "mup") for t in range(STEPS)]
    print(f"{name:8} " + "  ".join(f"{s:7.2f}" for s in spread))


if __name__ == "__main__":
  main()
