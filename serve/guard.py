"""ASGI middleware in front of the routes: the API key, and a cap on a request body's size.

Both answer before the body is parsed, so a client without the key or with a huge body
costs the server no more than the bytes it has read."""
import secrets

from treadle.serve import schemas

_OPEN = ("GET", "/health")  # a load balancer's probe needs no key


async def _refuse(send, status: int, message: str, code: str, headers=()) -> None:
  body = schemas.ErrorResponse(error=schemas.ErrorDetail(
      message=message, type="invalid_request_error", code=code)).model_dump_json().encode()
  await send({"type": "http.response.start", "status": status,
              "headers": [(b"content-type", b"application/json"),
                          (b"content-length", str(len(body)).encode()), *headers]})
  await send({"type": "http.response.body", "body": body})


class ApiKey:
  """Every route but GET /health needs `Authorization: Bearer KEY`; else 401."""

  def __init__(self, app, key: str):
    self.app, self.key = app, key.encode()

  async def __call__(self, scope, receive, send):
    if scope["type"] == "http" and (scope["method"], scope["path"]) != _OPEN:
      given = dict(scope["headers"]).get(b"authorization", b"")
      scheme, _, token = given.partition(b" ")
      # constant time: how long the check takes says nothing about how much of it matched
      ok = secrets.compare_digest(token.strip(), self.key)
      if scheme.lower() != b"bearer" or not ok:
        message = ("incorrect API key provided" if given else
                   "no API key provided: send the header 'Authorization: Bearer KEY'")
        return await _refuse(send, 401, message, "invalid_api_key",
                             [(b"www-authenticate", b"Bearer")])
    await self.app(scope, receive, send)


class BodyLimit:
  """A request body over `max_bytes` is 413, by its Content-Length or, when that is absent
  or lies, by the bytes that arrive; the body is read here and handed on whole."""

  def __init__(self, app, max_bytes: int):
    self.app, self.max_bytes = app, max_bytes

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    length = dict(scope["headers"]).get(b"content-length", b"")
    if length.isdigit() and int(length) > self.max_bytes:
      return await self._too_large(send)
    chunks, size, more = [], 0, True
    while more:
      message = await receive()
      if message["type"] != "http.request":  # the client left before sending it all
        return
      chunks.append(message.get("body", b""))
      size += len(chunks[-1])
      if size > self.max_bytes:
        return await self._too_large(send)
      more = message.get("more_body", False)
    replayed = False

    async def replay():  # the body once, then what the server sends (a disconnect)
      nonlocal replayed
      if replayed:
        return await receive()
      replayed = True
      return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
    await self.app(scope, replay, send)

  async def _too_large(self, send) -> None:
    mib = self.max_bytes / 2**20
    await _refuse(send, 413, f"the request body is larger than {mib:g} MiB (--max_body_mb)",
                  "request_too_large")
