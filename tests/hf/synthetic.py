"""Hugging Face model directories written without torch or transformers (safetensors and
tokenizers only), for the tests of treadle-only behaviour: bad input, LoRA fine-tuning."""
import json
import pathlib

import numpy as np
import tokenizers as hf
from safetensors import numpy as st_numpy
from tokenizers import decoders, models, pre_tokenizers, trainers

from treadle.hf import architectures
from treadle.hf import importer
from treadle.hf import weights

VOCAB = 301  # not a multiple of 8: treadle pads its vocabulary axis and masks the padding
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"

GPT2_CONFIG = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 32,
               "n_layer": 2, "n_head": 4, "n_positions": 128, "vocab_size": VOCAB,
               "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
               "bos_token_id": 0, "eos_token_id": 1}
LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": VOCAB,
                "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "hidden_act": "silu",
                "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 0,
                "eos_token_id": 1}


def train_tokenizer(text: str) -> hf.Tokenizer:
  """A byte-level BPE trained on local text, with two special tokens."""
  tok = hf.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB - 2, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                special_tokens=["<|bos|>", "<|eos|>"])
  tok.train_from_iterator([text[:200_000]], trainer)
  return tok


def write(out: pathlib.Path, config: dict, text: str, seed: int = 0) -> pathlib.Path:
  """config.json, random float32 weights named as transformers names them, tokenizer files."""
  out.mkdir(parents=True, exist_ok=True)
  arch, options = architectures.model_options(config)
  cfg = importer.run_config(options, None).model
  rng = np.random.default_rng(seed)
  tensors = {}
  for link in weights.links(cfg, arch):
    for name, shape in zip(link.hf_names, link.hf_shapes):
      tensors[name] = (rng.normal(size=shape) / np.sqrt(shape[-1])).astype(np.float32)
  st_numpy.save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
  (out / "config.json").write_text(json.dumps(config))
  train_tokenizer(text).save(str(out / "tokenizer.json"))
  (out / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>",
       "eos_token": "<|eos|>", "chat_template": CHAT_TEMPLATE}))
  return out
