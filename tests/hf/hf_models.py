"""Tiny random Hugging Face models and a locally trained BPE tokenizer, saved with
save_pretrained (needs torch and transformers: callers skip without them)."""
import pathlib

import numpy as np
import pytest

from tests.hf.synthetic import CHAT_TEMPLATE, VOCAB, train_tokenizer


def configs(transformers) -> dict:
  """The three families the issue names, small enough to run in a second."""
  common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1)
  llama = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               rms_norm_eps=1e-5, **common)
  return {
      "gpt2": transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                      layer_norm_epsilon=1e-5, **common),
      "llama": transformers.LlamaConfig(tie_word_embeddings=False, rope_theta=500000.0,
                                        **llama),
      # Llama 3.1's rope scaling, with a short original context so the stretch is exercised
      "llama3": transformers.LlamaConfig(
          tie_word_embeddings=False, rope_scaling={
              "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
          rope_theta=10000.0, **llama),
      "qwen2": transformers.Qwen2Config(tie_word_embeddings=True, **llama),
  }


def randomize(model, torch) -> None:
  """Weights large enough that logits are far from uniform; biases and norm scales random
  (transformers initialises them to 0 and 1, which would hide a mapping error)."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.dim() == 1 and ("norm" in name or "ln_" in name):
        p.copy_(1.0 + 0.2 * noise)
      elif p.dim() == 1:
        p.copy_(0.3 * noise)
      else:
        p.copy_(noise / p.shape[-1] ** 0.5 * 2.0)


def build(kind: str, **overrides):
  """A random float32 HF model of `kind` in eval mode; `overrides` change its config."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  config = configs(transformers)[kind]
  config.update(overrides)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  randomize(model, torch)
  return model.eval()


def save(kind: str, out: pathlib.Path, text: str):
  """(HF model in eval mode, tokenizer) after writing both to `out`."""
  transformers = pytest.importorskip("transformers")
  model = build(kind)
  model.save_pretrained(out)
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=train_tokenizer(text), bos_token="<|bos|>", eos_token="<|eos|>")
  if kind != "gpt2":
    tokenizer.chat_template = CHAT_TEMPLATE
  tokenizer.save_pretrained(out)
  return model, tokenizer


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()


def hf_greedy(model, ids: np.ndarray, new_tokens: int) -> list[int]:
  import torch
  out = model.generate(torch.tensor(ids[None], dtype=torch.long), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                       pad_token_id=0)
  return out[0, len(ids):].tolist()
