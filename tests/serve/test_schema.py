"""schemathesis against the server's own /openapi.json: no 5xx, no response off the schema."""
import itertools

import hypothesis
import httpx
import schemathesis
from schemathesis import checks

# Generated requests may ask for up to 8192 tokens of n=16 choices each; to bound the test's
# time (not the server's checks), the schema the test generates from caps these lower.
_CAPS = {"max_tokens": 24, "n": 2, "max_completion_tokens": 24}
_CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
           checks.content_type_conformance, checks.response_schema_conformance]


def _capped(schema: dict) -> dict:
  for model in schema["components"]["schemas"].values():
    for name, prop in model.get("properties", {}).items():
      if name in _CAPS:
        for option in prop.get("anyOf", [prop]):
          if "maximum" in option:
            option["maximum"] = _CAPS[name]
  return schema


def test_openapi_schema_fuzzed_finds_no_server_error(server):
  served = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
  assert {"/health", "/v1/models", "/v1/completions", "/v1/chat/completions"} <= set(served["paths"])
  schema = schemathesis.openapi.from_dict(_capped(served))
  failures = {}  # (operation, mode) -> its last (shrunk) failure
  operations = [result.ok() for result in schema.get_all_operations()]
  # positive: requests the schema allows; negative: requests it forbids (must be 4xx)
  for op, mode in itertools.product(operations, list(schemathesis.GenerationMode)):
    if mode == schemathesis.GenerationMode.NEGATIVE and op.method.upper() == "GET":
      continue  # no parameters to break

    @hypothesis.settings(max_examples=15, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=op.as_strategy(mode))
    def fuzz(case):
      response = case.call(base_url=server.url, timeout=60)
      case.validate_response(response, checks=_CHECKS)

    # any failure counts, a refused or timed-out request as much as a bad response (the
    # schemathesis failures are AssertionError or FailureGroup); collected so that every
    # operation's (shrunk) failure is reported, not only the first
    try:
      fuzz()
    except Exception as e:  # noqa: BLE001
      failures[f"{op.method.upper()} {op.path} ({mode.value})"] = f"{type(e).__name__}: {e}"
  assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
