"""Post-training rows: JSONL errors name file and line, loss masks cover answers only, chat
rows are split into turns as the template renders them, packing, row splits, eval padding."""
import json

import numpy as np
import pytest

from tests.hf import chat_tokenizers
from treadle.data import chat
from treadle.data import post
from treadle.data import tokenizers

CHARS = tokenizers.CharTokenizer("".join(sorted(set("0123456789+= abcdefghijklmnopqrstuvwxyz?"))))


def _write(tmp_path, lines) -> str:
  path = tmp_path / "rows.jsonl"
  path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
  return str(path)


@pytest.mark.parametrize("lines,message", [
    (['{"prompt": "a"}', '{"prompt": '], r"rows.jsonl:2: not valid JSON"),
    (['{"prompt": "a"}', "", "[1, 2]"], r"rows.jsonl:3: a row must be a JSON object"),
    (["", "  "], r"holds no rows"),
])
def test_a_bad_line_names_the_file_and_line(tmp_path, lines, message):
  with pytest.raises(ValueError, match=message):
    post.read_jsonl(_write(tmp_path, lines), "data.path")


def test_a_missing_file_and_an_unset_path_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"data.path='.*nope.jsonl': no such file"):
    post.read_jsonl(str(tmp_path / "nope.jsonl"), "data.path")
  with pytest.raises(ValueError, match=r"rl.prompts is required"):
    post.read_jsonl("", "rl.prompts")


@pytest.mark.parametrize("row,message", [
    ({"prompt": "ab"}, r"f:7: field 'completion' must be a non-empty string"),
    ({"prompt": 3, "completion": "x"}, r"f:7: field 'prompt' must be"),
    ({"messages": [{"role": "user"}]}, r"f:7: field 'messages' must be a list"),
    ({"prompt": "ab", "completion": "é"}, r"f:7: character 'é' is not in the tokenizer"),
])
def test_a_row_missing_a_field_is_named(row, message):
  with pytest.raises(ValueError, match=message):
    post.sft_example(post.Renderer(CHARS), row, "f:7")


def test_the_mask_covers_the_completion_and_the_end_of_text_only():
  ids, mask = post.sft_example(post.Renderer(CHARS), {"prompt": "12+3=", "completion": "15"}, "")
  assert CHARS.decode(ids) == "12+3=15" and ids[-1] == CHARS.eot_id
  np.testing.assert_array_equal(mask, [0] * 5 + [1, 1, 1])


def test_messages_need_a_chat_template():
  with pytest.raises(ValueError, match=r"f:2: a messages row needs a chat template"):
    post.sft_example(post.Renderer(CHARS), {"messages": [{"role": "user", "content": "a"}]},
                     "f:2")


@pytest.fixture(scope="module")
def qwen2(text_file):
  family = chat_tokenizers.FAMILIES["qwen2"]
  tok = chat_tokenizers.train(family["specials"], text_file.read_text())
  return tokenizers.HfTokenizer(tok, 320, family["tokens"], family["template"],
                                {"eos_token_id": tok.token_to_id("<|im_end|>")})


def test_chat_rows_learn_every_assistant_turn_and_nothing_else(qwen2):
  messages = [{"role": "user", "content": "two and two?"},
              {"role": "assistant", "content": "Four."},
              {"role": "user", "content": "and three?"},
              {"role": "assistant", "content": "Five."}]
  ids, mask = post.sft_example(post.Renderer(qwen2), {"messages": messages}, "")
  assert qwen2.decode(ids) == chat.render(qwen2, messages, add_generation_prompt=False)
  learned = qwen2.decode(ids[mask == 1])
  # each assistant turn's text as the template closes it, and no user or system text
  assert learned == "Four.<|im_end|>\nFive.<|im_end|>\n", learned
  before_first = qwen2.decode(ids[:np.argmax(mask)])
  assert before_first.endswith("<|im_start|>assistant\n") and "two and two?" in before_first


def test_preference_rows_in_messages_form_render_the_prompt_once(qwen2):
  row = {"prompt": [{"role": "user", "content": "two and two?"}],
         "chosen": [{"role": "assistant", "content": "Four."}],
         "rejected": {"role": "assistant", "content": "Five."}}
  prompt, chosen, rejected = post.preference_example(post.Renderer(qwen2), row, "")
  assert qwen2.decode(prompt).endswith("<|im_start|>assistant\n")
  assert qwen2.decode(chosen) == "Four.<|im_end|>\n"
  assert qwen2.decode(rejected) == "Five.<|im_end|>\n"


def test_row_splits_are_disjoint_seeded_and_hold_at_least_one_row_each():
  train, val, test = post.split_rows(20, 0.1, 0.05, seed=3, what="x")
  assert (len(train), len(val), len(test)) == (17, 2, 1)
  assert sorted(np.concatenate([train, val, test])) == list(range(20))
  again = post.split_rows(20, 0.1, 0.05, seed=3, what="x")
  assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
  with pytest.raises(ValueError, match=r"x: 2 usable rows are too few"):
    post.split_rows(2, 0.1, 0.1, seed=0, what="x")


def test_eval_batches_cover_every_row_once_and_pad_with_zero_weight():
  arrays = {"x": np.arange(10)}
  batches = post.fixed_batches(arrays, 4, 0)
  assert len(batches) == 3
  real = np.concatenate([b["x"][b["weights"] > 0] for b in batches])
  assert sorted(real) == list(range(10))
  assert batches[-1]["weights"].tolist() == [1, 1, 0, 0]
  # two processes: each gets its half of every global batch
  halves = [post.fixed_batches(arrays, 4, 0, p, 2) for p in range(2)]
  assert np.concatenate([halves[0][0]["x"], halves[1][0]["x"]]).tolist() == [0, 1, 2, 3]


def test_train_batches_resume_where_the_iterator_stopped():
  arrays = {"x": np.arange(7)}
  it = post.train_iterator(arrays, 3, seed=1)
  [next(it) for _ in range(4)]
  state = it.get_state()
  expected = [next(it)["x"].tolist() for _ in range(3)]
  resumed = post.train_iterator(arrays, 3, seed=1)
  resumed.set_state(state)
  assert [next(resumed)["x"].tolist() for _ in range(3)] == expected
  first_epoch = post.train_iterator(arrays, 7, seed=1)
  assert sorted(next(first_epoch)["x"].tolist()) == list(range(7))  # an epoch is a permutation
