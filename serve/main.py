"""treadle-serve: serve a trained run over HTTP with an OpenAI-compatible API.

  treadle-serve --workdir=DIR [--step N|best] [--host 127.0.0.1] [--port 8000] \
      [--max_batch 32] [--max_queue 256] [--merge_lora] [--dtype float32|bfloat16] \
      [--quantize int8] \
      [--api_key KEY] [--max_body_mb 4] [--shutdown_timeout 30] [--max_model_len N] \
      [--max_cache_gib 16] [--draft_workdir D | --draft ngram] [--num_draft_tokens 4]

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions;
the schema at /openapi.json. SIGTERM (or Ctrl-C) stops accepting connections, gives the
requests in flight --shutdown_timeout seconds to finish, and exits 0. Bad flags or a missing
run are a one-line error, exit 2.
"""
import contextlib
import ipaddress
import logging
import math
import os
import pathlib
import signal
import socket

from absl import flags

from treadle.common import entry
from treadle.infer import load_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by treadle-train.")
_STEP = flags.DEFINE_string("step", None, "Checkpoint step: a number, 'best' or latest (default).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0: every interface).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to bind; 0 = any free port (it is logged).")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 32, "Batch slots decoded together.")
_MAX_QUEUE = flags.DEFINE_integer("max_queue", 256, "Requests waiting for a slot; past it, 429.")
_MAX_MODEL_LEN = flags.DEFINE_integer("max_model_len", 0, "Tokens each slot's KV cache holds: "
                                      "the longest prompt and the window decoding slides in; "
                                      "0 = the model's context, at most 4096.")
_MAX_CACHE_GIB = flags.DEFINE_float("max_cache_gib", 16.0, "Refuse to start when the slots' KV "
                                    "caches (max_batch x max_model_len) need more GiB.")
_API_KEY = flags.DEFINE_string("api_key", None, "Require 'Authorization: Bearer KEY' on "
                               "every route but GET /health; default: $TREADLE_API_KEY.")
_MAX_BODY_MB = flags.DEFINE_float("max_body_mb", 4.0, "Largest request body (MiB); past it, 413.")
_SHUTDOWN_TIMEOUT = flags.DEFINE_float("shutdown_timeout", 30.0, "Seconds the requests in "
                                       "flight get after SIGTERM; then they are cut and it exits.")

log = logging.getLogger("treadle.serve")


def _load(workdir: str):
  import jax
  from treadle.infer import sampler as sampler_lib
  return sampler_lib.Sampler.from_workdir(
      workdir, entry.checkpoint_step(_STEP.value), (1, 1, 1), "dp",
      devices=jax.devices()[:1], **load_flags.sampler_args())


def _bind(host: str, port: int) -> socket.socket:
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    entry.fail(f"cannot bind {host}:{port}: {e.strerror}")
  return sock


def _api_key() -> str | None:
  return _API_KEY.value or os.environ.get("TREADLE_API_KEY") or None


def _warn_if_open(sock: socket.socket, api_key: str | None) -> None:
  host = sock.getsockname()[0]
  if not api_key and not ipaddress.ip_address(host).is_loopback:
    log.warning("warning: %s is reachable from other machines and anyone there may use this "
                "server: set --api_key (or TREADLE_API_KEY)", host)


def serve(server, sock: socket.socket, api_key: str | None = None,
          max_body_mb: float = 4.0, shutdown_timeout: float = 30.0) -> None:
  import uvicorn
  from treadle.serve import api

  @contextlib.asynccontextmanager
  async def lifespan(app):
    server.engine.start()
    yield
    server.engine.stop()

  host, port = sock.getsockname()[:2]

  class Uvicorn(uvicorn.Server):
    async def startup(self, sockets=None):
      await super().startup(sockets)
      # logged once it listens: a client that connects after reading this line gets in
      log.info("serving %s (step %d) on http://%s:%d", server.model_name, server.step, host,
               port)

    def handle_exit(self, sig, frame):
      server.draining = True  # /health says so while the requests in flight finish
      super().handle_exit(sig, frame)

  app = api.make_app(server, lifespan, api_key, int(max_body_mb * 2**20))
  # past the timeout uvicorn cancels the requests still running (a client that stopped
  # reading would otherwise hold the server forever); their slots free at the next step
  config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5,
                          timeout_graceful_shutdown=shutdown_timeout)
  # uvicorn re-raises the signal that stopped it once it has drained; answer that one
  # with a no-op so a drained server exits 0
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: None)
  Uvicorn(config).run(sockets=[sock])
  log.info("drained; exiting")


def main(argv) -> None:
  del argv
  if not _WORKDIR.value:
    entry.fail("--workdir is required")
  for name, flag, low in (("max_batch", _MAX_BATCH, 1), ("max_queue", _MAX_QUEUE, 0),
                          ("port", _PORT, 0), ("max_model_len", _MAX_MODEL_LEN, 0)):
    if flag.value < low:
      entry.fail(f"--{name}={flag.value} must be >= {low}")
  load_flags.check()
  if _PORT.value > 65535:
    entry.fail(f"--port={_PORT.value} must be <= 65535")
  if not 0 < _MAX_BODY_MB.value < math.inf:
    entry.fail(f"--max_body_mb={_MAX_BODY_MB.value} must be a number > 0")
  if not 0 < _MAX_CACHE_GIB.value <= math.inf:  # nan fails too
    entry.fail(f"--max_cache_gib={_MAX_CACHE_GIB.value} must be a number > 0")
  if not 0 <= _SHUTDOWN_TIMEOUT.value < math.inf:
    entry.fail(f"--shutdown_timeout={_SHUTDOWN_TIMEOUT.value} must be a number >= 0")
  sock = _bind(_HOST.value, _PORT.value)  # before loading: a taken port fails fast
  from treadle.serve import api
  from treadle.serve import engine as engine_lib
  from treadle.common import logs
  logs.setup()
  _warn_if_open(sock, _api_key())  # now, not after minutes of loading
  with entry.one_line_errors():
    sampler = _load(_WORKDIR.value)
    engine_class = engine_lib.Engine
    if sampler.draft is not None:
      from treadle.serve import spec_engine
      engine_class = spec_engine.SpecEngine
    engine = engine_class(sampler, _MAX_BATCH.value, _MAX_QUEUE.value,
                          _MAX_MODEL_LEN.value or None, _MAX_CACHE_GIB.value)
  log.info("KV cache: %d slots x %d tokens = %.3f GiB; step buckets %s; weights %s bytes",
           engine.max_batch, engine.window, engine.cache_gib, engine.buckets,
           f"{sampler.weights_bytes:,}")
  engine.warm_up()
  name = pathlib.Path(_WORKDIR.value).resolve().name
  serve(api.Server(engine, name, sampler.step), sock, _api_key(), _MAX_BODY_MB.value,
        _SHUTDOWN_TIMEOUT.value)


def run() -> None:
  entry.run(main)


if __name__ == "__main__":
  run()
