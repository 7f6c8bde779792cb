"""nanoGPT's documented CPU recipe: a 4-layer character GPT on Shakespeare.

Command:
  treadle-train --config configs/shakespeare_char_cpu.py --workdir runs/cpu \
      --config.data.path=../shared/data/tinyshakespeare/input.txt
Measured on tinyshakespeare (this 2-core CPU, 2026-11-24), val loss at step 2000 over the
whole validation split (the 5% after the 90% training text):
  seed 1337 (default) 1.8909 (test 1.9244) | seed 0 1.8832 (test 1.9272) |
  seed 1 1.8864 (test 1.9192) | mean of the three 1.8868; nanoGPT reports 1.886.
Wall time: 113 s for the whole command (nanoGPT: 112 s for 2000 steps on this machine).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "lm"                   # lm (language modelling) | classify (images)

  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 4          # transformer blocks
  c.model.num_heads = 4           # attention heads per block
  c.model.num_kv_heads = 0        # grouped-query attention: key/value heads; 0 = num_heads
  c.model.embed_dim = 128         # residual stream width
  c.model.mlp = "gelu"            # gelu (tanh form, GPT-2) | swiglu (gate and up, Llama)
  c.model.mlp_ratio = 4           # MLP hidden = mlp_ratio * embed_dim ...
  c.model.mlp_hidden_dim = 0      # ... unless set here (> 0)
  c.model.norm = "layernorm"      # layernorm | rmsnorm
  c.model.position = "learned"    # learned (absolute, max_seq_len of them) | rope (rotary)
  c.model.rope_base = 10000.0     # rotary base frequency (position=rope)
  c.model.qk_norm = False         # RMS-normalise queries and keys per head before attention
  c.model.logit_softcap = 0.0     # output logits = cap * tanh(logits / cap); 0 = off
  c.model.tie_embeddings = True   # output layer shares the token embedding; False = own lm_head
  c.model.scan_layers = False     # stack the blocks' params and run them with nnx.scan
  c.model.remat = "none"          # rematerialise blocks in backprop: none | full | dots | dots_no_batch
  c.model.dropout = 0.0           # on attention probs, residual branches and embeddings
  c.model.use_bias = False        # biases in Linear and LayerNorm (nanoGPT: False)
  c.model.compute_dtype = "float32"  # float32 | bfloat16 (params stay float32)
  c.model.vocab_multiple = 8      # vocab padded up to this multiple (padding is masked)
  c.model.vocab_size = 0          # 0 = the tokenizer's vocabulary size
  c.model.max_seq_len = 0         # context window (positions, KV cache); 0 = data.seq_len

  c.data = ml_collections.ConfigDict()
  c.data.path = ""                # file, dir, glob or comma list of them; "" = Shakespeare
                                  # (.txt .jsonl .jsonl.gz .jsonl.zst .parquet)
  c.data.text_field = "text"      # JSONL field / parquet column holding each document's text
  c.data.mixture = ""             # instead of path: NAME=PATH:WEIGHT,... examples drawn by weight
  c.data.packing = False          # packed rows with segment ids: no attention/loss across documents
  c.data.tokenizer = "char"       # char | byte | bpe (byte-level BPE, HF `tokenizers`)
  c.data.vocab_size = 0           # BPE vocabulary size (data.tokenizer=bpe); ignored by char/byte
  c.data.tokenizer_sample_bytes = 50_000_000  # BPE learns from at most this much training text
  c.data.seq_len = 64             # context length of training windows
  c.data.val_fraction = 0.05      # one document: contiguous tail splits train | val | test;
  c.data.test_fraction = 0.05     # many documents: whole documents held out for val and test
  c.data.cache_dir = ""           # "" = $TREADLE_CACHE or ~/.cache/treadle (corpus, token cache)
  c.data.prepare_workers = 0      # processes tokenizing files in parallel; 0 = one per core

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"            # adamw | lion | muon (Muon: hidden matrices, AdamW: rest)
  c.optimizer.learning_rate = 1e-3      # peak, after linear warmup (lion: its own lr)
  c.optimizer.min_learning_rate = 1e-4  # cosine decays to this
  c.optimizer.warmup_steps = 100
  c.optimizer.decay_steps = 0           # 0 = train.num_steps
  c.optimizer.beta1 = 0.9               # AdamW first moment; lion: update interpolation
  c.optimizer.beta2 = 0.99              # AdamW second moment; lion: momentum decay
  c.optimizer.weight_decay = 0.1        # matrices only (not norms/biases), any optimizer
  c.optimizer.grad_clip_norm = 1.0      # global-norm clipping; 0 = off
  c.optimizer.muon_learning_rate = 0.02 # muon: peak lr of its matrices, same schedule shape
  c.optimizer.muon_momentum = 0.95      # muon: Nesterov momentum of its matrices

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 2000
  c.train.batch_size = 12               # global, across all devices and processes
  c.train.grad_accum_steps = 1          # micro-batches per update (scanned inside the step)
  c.train.seed = 1337
  c.train.log_every = 10                # steps between train-loss lines
  c.train.eval_every = 250              # steps between validation passes
  c.train.eval_batches = 0              # fixed val/test batches per pass; 0 = the whole split
  c.train.checkpoint_every = 500        # steps between checkpoints (also saved at the end)
  c.train.keep_checkpoints = 2          # latest K kept ...
  c.train.keep_best = True              # ... plus the best by validation loss
  c.train.early_stopping_patience = 0   # evaluations without improvement; 0 = off
  c.train.early_stopping_min_delta = 0.0  # smaller val-loss gains don't reset the patience
  c.train.target_val_loss = 0.0         # stop once val loss <= this (time-to-target runs); 0 = off
  c.train.max_nonfinite_steps = 0       # non-finite steps skipped (not applied) before stopping
  c.train.init_from = ""                # fine-tune: a workdir or checkpoint step dir (params only)
  c.train.matmul_precision = "default"  # default | high | highest

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                      # -1 = the remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = "dp"                   # dp | fsdp | fsdp_tp (presets in train/mesh.py)
  c.mesh.cpu_devices = 0                # CPU-only host: simulated devices; 0 = one per core

  c.finetune = ml_collections.ConfigDict()  # LoRA (with train.init_from); lm task only
  c.finetune.lora_rank = 0              # 0 = off; R > 0 freezes the base, trains rank-R adapters
  c.finetune.lora_alpha = 16.0          # adapter output scaled by lora_alpha / lora_rank
  c.finetune.lora_targets = "attn"      # comma-separated: attn, mlp, or weights qkv,q,kv,out,fc,proj
  return c
