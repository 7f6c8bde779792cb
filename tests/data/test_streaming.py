"""treadle.data.streaming: the one text stream of every decoder (sampler, CLI, server)."""
import random

import pytest
import tokenizers as hf
from tokenizers import decoders, models, pre_tokenizers, trainers

from treadle.data import streaming
from treadle.data import tokenizers

EXTRA = " héllo wörld 日本語 ✓ naïve café"


def _metaspace(text: str) -> tokenizers.HfTokenizer:
  """SentencePiece-style (Llama 2, Mistral): ▁ marks a word start, bytes for the rest."""
  tok = hf.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                special_tokens=["<unk>", "<s>", "</s>"],
                                initial_alphabet=[f"<0x{i:02X}>" for i in range(256)])
  tok.train_from_iterator([text], trainer)
  return tokenizers.HfTokenizer(tok, tok.get_vocab_size())


@pytest.fixture(scope="module")
def all_tokenizers(text_file):
  text = text_file.read_text()[:100_000] + EXTRA
  return {"metaspace": _metaspace(text), "bpe": tokenizers.fit("bpe", text, 400),
          "byte": tokenizers.ByteTokenizer(), "char": tokenizers.fit("char", text)}


def _decode_shown(tok, ids) -> str:
  hidden = streaming.special_ids(tok)
  return tok.decode([i for i in ids if i not in hidden])


def _sequences(tok, text, rng, count=150):
  """Real text (words, multi-byte characters split over byte tokens) and random ids."""
  for _ in range(count):
    if rng.random() < 0.6:
      start = rng.randrange(len(text) - 100)
      ids = [int(i) for i in tok.encode(text[start:start + rng.randrange(4, 100)])]
    else:
      ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(2, 40))]
    if len(ids) >= 2:
      yield ids


@pytest.mark.parametrize("kind", ["metaspace", "bpe", "byte", "char"])
def test_text_is_what_the_new_ids_add_to_the_prompt(all_tokenizers, text_file, kind):
  """prompt_text + completion_text == decode(prompt + completion), special tokens skipped,
  token by token (a decoder of the new ids alone drops a Metaspace word's space and cuts
  multi-byte characters); what was sendable along the way adds up to the same text."""
  tok = all_tokenizers[kind]
  text = text_file.read_text()[:50_000] + EXTRA * 3
  rng, checked = random.Random(kind), 0
  for ids in _sequences(tok, text, rng):
    cut = rng.randrange(1, len(ids))
    prompt, new = ids[:cut], ids[cut:]
    whole, before = _decode_shown(tok, ids), _decode_shown(tok, prompt)
    if not whole.startswith(before):
      continue  # a prompt ending mid character: its own text is not a prefix
    stream, sent = streaming.TextStream(tok, prompt, len(new)), ""
    for token_id in new:
      stream.add(token_id)
      sent += stream.text[len(sent):stream.safe_length()]
    assert stream.finish_reason == "length"
    assert stream.text == sent == whole[len(before):], (kind, prompt, new)
    checked += 1
  assert checked > 100


def test_metaspace_continuation_starts_with_its_space(all_tokenizers):
  tok = all_tokenizers["metaspace"]
  prompt, new = tok.encode("the king"), tok.encode("the king is dead")[len(tok.encode("the king")):]
  assert streaming.completion_text(tok, prompt, new, 10).text == " is dead"


def test_a_character_split_over_byte_tokens_is_sent_whole(all_tokenizers):
  tok = all_tokenizers["byte"]
  stream = streaming.TextStream(tok, tok.encode("a"), 10)
  pieces = []
  for token_id in tok.encode("日本"):
    stream.add(token_id)
    pieces.append(stream.text[:stream.safe_length()])
  assert pieces == ["a"[1:]] * 2 + ["日"] + ["日"] * 2 + ["日本"]
  assert "\ufffd" not in "".join(pieces)


def test_end_of_sequence_ends_and_its_text_is_left_out(all_tokenizers):
  tok = all_tokenizers["bpe"]
  eot = tok.eot_id
  stream = streaming.TextStream(tok, tok.encode("ROMEO:"), 10, stop_ids=[eot])
  for token_id in [*tok.encode(" hi"), eot, *tok.encode(" more")]:
    if stream.add(token_id):
      break
  assert (stream.text, stream.finish_reason, stream.generated) == (" hi", "stop",
                                                                   len(tok.encode(" hi")) + 1)
  assert stream.add(tok.encode("x")[0]) and stream.text == " hi"  # later ids are ignored
  # no stop ids (ignore_eos): the special token is skipped and decoding goes on
  ids = [*tok.encode(" hi"), eot, *tok.encode(" more")]
  going = streaming.completion_text(tok, tok.encode("ROMEO:"), ids, len(ids))
  assert (going.text, going.finish_reason) == (" hi more", "length")


def test_special_tokens_show_only_when_asked(all_tokenizers):
  tok = all_tokenizers["metaspace"]
  bos = tok.hf_tokenizer.token_to_id("<s>")
  ids = [*tok.encode("a cat"), bos, *tok.encode("a cat")]
  assert streaming.completion_text(tok, [bos], ids, 20).text == "a cat a cat"
  shown = streaming.completion_text(tok, [bos], ids, 20, skip_special_tokens=False).text
  assert shown.count("<s>") == 1 and shown.endswith("a cat")


def test_stop_string_across_tokens_is_cut_and_never_sent(all_tokenizers):
  tok = all_tokenizers["char"]
  stream = streaming.TextStream(tok, tok.encode("A"), 50, stop=["\n\nB"])
  sent = ""
  for token_id in tok.encode("bc\n\nBd"):
    done = stream.add(token_id)
    sent += stream.text[len(sent):stream.safe_length()]
    assert "\n" not in sent  # a possible start of the stop string is held back
    if done:
      break
  assert (stream.text, sent, stream.finish_reason) == ("bc", "bc", "stop")


def test_length_after_max_tokens(all_tokenizers):
  tok = all_tokenizers["char"]
  stream = streaming.TextStream(tok, tok.encode("A"), 3)
  assert [stream.add(i) for i in tok.encode("abcd")[:3]] == [False, False, True]
  assert (stream.text, stream.finish_reason) == ("abc", "length")
