"""A small CNN on scikit-learn's 8x8 handwritten digits (1,797 images, 80/10/10 split).

Command:
  treadle-train --config configs/digits_cnn.py --workdir runs/digits_cnn
  treadle-predict --workdir runs/digits_cnn --input some_digit.png
Measured (this 2-core CPU, 2026-11-24, machine shared with other jobs): test accuracy
99.44% (178/179; checkpoint step 800, best val loss) in 25 s wall for the whole command,
training included; DIR/confusion_matrix.png shows the test set.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "classify"             # lm (language modelling) | classify (images)

  c.model = ml_collections.ConfigDict()
  c.model.kind = "cnn"            # cnn | vit
  c.model.width = 32              # cnn: channels of the first convs (doubled after pooling)
  c.model.embed_dim = 64          # vit: token width
  c.model.num_layers = 2          # vit: transformer blocks
  c.model.num_heads = 4           # vit: attention heads
  c.model.patch_size = 2          # vit: square patch side in pixels
  c.model.dropout = 0.1           # before the classification head (cnn) / in blocks (vit)
  c.model.num_classes = 0         # 0 = from the data
  c.model.image_height = 0        # 0 = from the data
  c.model.image_width = 0         # 0 = from the data

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "digits"       # scikit-learn's bundled digits (offline)
  c.data.val_fraction = 0.1
  c.data.test_fraction = 0.1
  c.data.split_seed = 0           # the images are shuffled once with this seed, then split
  c.data.max_shift = 1            # augmentation: random shifts up to this many pixels; 0 = off

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"            # adamw | lion | muon (Muon: hidden matrices, AdamW: rest)
  c.optimizer.learning_rate = 3e-3      # peak, after linear warmup (lion: its own lr)
  c.optimizer.min_learning_rate = 3e-5  # cosine decays to this
  c.optimizer.warmup_steps = 50
  c.optimizer.decay_steps = 0           # 0 = train.num_steps
  c.optimizer.beta1 = 0.9               # AdamW first moment; lion: update interpolation
  c.optimizer.beta2 = 0.999             # AdamW second moment; lion: momentum decay
  c.optimizer.weight_decay = 1e-4       # matrices only (not norms/biases), any optimizer
  c.optimizer.grad_clip_norm = 1.0      # global-norm clipping; 0 = off
  c.optimizer.muon_learning_rate = 0.02 # muon: peak lr of its matrices, same schedule shape
  c.optimizer.muon_momentum = 0.95      # muon: Nesterov momentum of its matrices

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.batch_size = 64               # global, across all devices and processes
  c.train.grad_accum_steps = 1          # micro-batches per update (scanned inside the step)
  c.train.seed = 0
  c.train.log_every = 50                # steps between train-metric lines
  c.train.eval_every = 100              # steps between validation passes
  c.train.eval_batches = 0              # ignored for images: always the whole split
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
