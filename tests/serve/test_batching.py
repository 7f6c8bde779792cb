"""Continuous batching: 32 requests at once return what each returns alone."""
import asyncio

import openai
import pytest

PROMPTS = [f"{name}:\n{line}" for name in ("ROMEO", "JULIET", "KING", "First Citizen")
           for line in ("My lord", "Good night", "What say you", "O", "Speak", "Now, sir",
                        "Farewell", "Peace")]


async def _one(client, prompt, **args):
  out = await client.completions.create(model="tiny", prompt=prompt, **args)
  return out.choices[0].text


async def _alone_then_together(server, args):
  """Each prompt alone (one request at a time), then all 32 at once; the most slots that
  /health saw running at the same time."""
  client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                              timeout=120)
  alone = [await _one(client, p, **args(i)) for i, p in enumerate(PROMPTS)]
  running = []

  async def watch():
    while True:
      running.append(await asyncio.to_thread(lambda: server.health()["running"]))

  watcher = asyncio.create_task(watch())
  together = await asyncio.gather(*(_one(client, p, **args(i)) for i, p in enumerate(PROMPTS)))
  watcher.cancel()
  await client.close()
  return alone, together, max(running, default=0)


@pytest.mark.parametrize("name,args", [
    ("greedy", lambda i: dict(max_tokens=64, temperature=0)),
    ("seeded", lambda i: dict(max_tokens=64, temperature=1.0, seed=100 + i,
                              extra_body={"top_k": 30})),
    # sequences end at different steps: the live ones move down into the freed slots and
    # the step shrinks to smaller buckets while the others go on
    ("ragged", lambda i: dict(max_tokens=8 + 5 * (i % 11), temperature=0)),
])
def test_32_concurrent_requests_return_what_each_returns_alone(server, name, args):
  assert len(PROMPTS) == 32
  alone, together, most_running = asyncio.run(_alone_then_together(server, args))
  assert together == alone
  assert len(set(alone)) > 8  # different prompts really give different text
  assert most_running > 8, f"requests did not run together (at most {most_running} at once)"
