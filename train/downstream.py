"""Multiple-choice tasks scored by log-likelihood inside the training loop (`eval.tasks`).

Rows are lm-evaluation-harness's multiple-choice fields, {"context": str, "choices": [str,
...], "label": int}; each choice is appended to the context with no separator. A request is
scored as lm-eval scores a loglikelihood request: whitespace ending the context moves to the
front of the continuation; the continuation's tokens are those of encode(context +
continuation) after the context's own tokens; a request longer than the model's window - 1
keeps its last window - 1 tokens (the context is cut from the left), as lm-eval's API models
(`local-completions` through treadle-serve, max_length = the model's context) keep
max_length - 1, one position left for the token they ask the server to generate. acc is the share of rows
whose label has the highest summed log-probability; acc_norm divides each choice's by its
length in characters (lm-eval's acc_norm).

Requests are right-padded to one length and scored by one jitted, sharded program (batches
stacked and scanned, as validation), on every evaluation.
"""
import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from treadle.model import axes
from treadle.train import mesh as mesh_lib


class TaskError(ValueError):
  """A task spec or file treadle cannot score: the message names it."""


@dataclasses.dataclass(frozen=True)
class Requests:
  """One task's requests (one per (row, choice)), tokenized and right-padded."""
  name: str
  tokens_RL: np.ndarray   # int32 [requests, length + 1]: inputs are [:, :-1], targets [:, 1:]
  scored_RL: np.ndarray   # float32 [requests, length]: 1 where a target is a continuation token
  row_R: np.ndarray       # the row each request belongs to
  chars_R: np.ndarray     # the choice's length in characters (acc_norm)
  labels: np.ndarray      # [rows]


def parse(spec: str) -> list[tuple[str, pathlib.Path]]:
  """"NAME=PATH.jsonl,..." -> [(name, path)]; a malformed spec raises TaskError."""
  tasks = []
  for item in (s.strip() for s in spec.split(",") if s.strip()):
    name, sep, path = item.partition("=")
    if not sep or not name.strip() or not path.strip():
      raise TaskError(f"eval.tasks: {item!r} is not NAME=PATH.jsonl")
    if "/" in name or name.strip() in (n for n, _ in tasks):
      raise TaskError(f"eval.tasks: task name {name.strip()!r} is repeated or has a '/'")
    tasks.append((name.strip(), pathlib.Path(path.strip()).expanduser()))
  return tasks


def _rows(name: str, path: pathlib.Path) -> list[dict]:
  if not path.is_file():
    raise TaskError(f"eval.tasks: {name}: no file {path}")
  rows = []
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    where = f"eval.tasks: {name}: {path}:{number}"
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise TaskError(f"{where}: not JSON ({e.msg})") from None
    choices, label = row.get("choices") if isinstance(row, dict) else None, None
    if not (isinstance(row, dict) and isinstance(row.get("context"), str)
            and isinstance(choices, list) and len(choices) >= 2
            and all(isinstance(c, str) and c for c in choices)):
      raise TaskError(f'{where}: needs {{"context": str, "choices": [2+ non-empty str], '
                      f'"label": int}}')
    label = row.get("label")
    if not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(choices)):
      raise TaskError(f"{where}: label {label!r} is not an index into its {len(choices)} choices")
    if not row["context"]:
      raise TaskError(f"{where}: empty context")
    rows.append(row)
  if not rows:
    raise TaskError(f"eval.tasks: {name}: {path} has no rows")
  return rows


def _request(tokenizer, context: str, continuation: str, window: int) -> tuple[list, int]:
  """(tokens, how many of the last ones are scored), as lm-eval builds a request."""
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  context_ids = [int(t) for t in tokenizer.encode(context)]
  whole = [int(t) for t in tokenizer.encode(context + continuation)]
  scored = len(whole) - len(context_ids)
  keep = window - 1  # lm-eval's API models: max_length - 1 tokens
  if scored < 1 or scored >= keep:
    raise TaskError(f"a continuation of {scored} tokens (of {continuation!r}): it must be "
                    f"1 to {keep - 1} (the model's window {window} - 2)")
  return whole[-keep:], scored


def read(spec: str) -> list[tuple[str, list[dict]]]:
  """(name, rows) of every task of `spec`: the checks that need no tokenizer (TaskError)."""
  return [(name, _rows(name, path)) for name, path in parse(spec)]


def load(spec: str, tokenizer, window: int) -> list[Requests]:
  """The tasks of `spec`, tokenized for a model of context `window`; TaskError if bad."""
  out = []
  for name, rows in read(spec):
    requests = []
    for r, row in enumerate(rows):
      for choice in row["choices"]:
        try:
          tokens, scored = _request(tokenizer, row["context"], choice, window)
        except ValueError as e:  # a TaskError, or a character the tokenizer does not know
          raise TaskError(f"eval.tasks: {name}: row {r + 1}: {e}") from None
        requests.append((tokens, scored, r, len(choice)))
    length = max(len(t) for t, *_ in requests)
    tokens_RL = np.zeros((len(requests), length), np.int32)
    scored_RL = np.zeros((len(requests), length - 1), np.float32)
    for i, (tokens, scored, _, _) in enumerate(requests):
      tokens_RL[i, :len(tokens)] = tokens
      scored_RL[i, len(tokens) - 1 - scored:len(tokens) - 1] = 1.0
    out.append(Requests(name, tokens_RL, scored_RL, np.array([q[2] for q in requests]),
                        np.array([q[3] for q in requests], np.float64),
                        np.array([row["label"] for row in rows])))
  return out


def accuracy(requests: Requests, loglik_R: np.ndarray) -> dict[str, float]:
  """acc and acc_norm (first maximum wins ties, as numpy's argmax in lm-eval)."""
  rows = len(requests.labels)
  right = right_norm = 0
  for r in range(rows):
    mine = requests.row_R == r
    ll, chars = loglik_R[mine], requests.chars_R[mine]
    right += int(np.argmax(ll) == requests.labels[r])
    right_norm += int(np.argmax(ll / chars) == requests.labels[r])
  return {"acc": right / rows, "acc_norm": right_norm / rows}


def _loglik(graphdef, rules, mesh, params, tokens_NBL, scored_NBL):
  """Summed log-probability of the scored targets of each request [N batches, B]."""
  model = nnx.merge(graphdef, params)

  def one(_, batch):
    tokens, scored = batch
    logits, _ = model(tokens[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_logp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return None, (target_logp * scored).sum(-1)

  with axes.activation_rules(rules, mesh):  # sharded as validation is
    return jax.lax.scan(one, None, (tokens_NBL, scored_NBL))[1]


class Scorer:
  """Scores `eval.tasks` with a run's current parameters: {"eval/NAME/acc": ...}."""

  def __init__(self, spec: str, tokenizer, window: int, graphdef, param_shardings, mesh,
               rules, batch_size: int):
    self.tasks = load(spec, tokenizer, window)
    self.batch_size, self.mesh = batch_size, mesh
    self.process_index, self.process_count = jax.process_index(), jax.process_count()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    stacked = mesh_lib.stacked_batch_sharding(mesh)
    self._score = jax.jit(functools.partial(_loglik, graphdef, rules, mesh),
                          in_shardings=(param_shardings, stacked, stacked),
                          out_shardings=replicated)

  def _stacked(self, array: np.ndarray) -> jax.Array:
    """Requests padded to whole batches [N, B, ...], this process's rows of each batch."""
    B = self.batch_size
    n = -(-array.shape[0] // B)
    padded = np.zeros((n * B, *array.shape[1:]), array.dtype)
    padded[:array.shape[0]] = array
    stacked = padded.reshape(n, B, *array.shape[1:])
    per = B // self.process_count
    local = stacked[:, self.process_index * per:(self.process_index + 1) * per]
    return jax.make_array_from_process_local_data(
        mesh_lib.stacked_batch_sharding(self.mesh), local, stacked.shape)

  def __call__(self, params) -> dict[str, float]:
    out = {}
    for task in self.tasks:
      loglik = self._score(params, self._stacked(task.tokens_RL), self._stacked(task.scored_RL))
      loglik_R = np.asarray(jax.device_get(loglik), np.float64).reshape(-1)
      scores = accuracy(task, loglik_R[:task.tokens_RL.shape[0]])
      out.update({f"eval/{task.name}/{k}": v for k, v in scores.items()})
    return out
