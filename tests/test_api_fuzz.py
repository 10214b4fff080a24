"""Property-based fuzzing of every documented API route (schemathesis): no input may cause a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import LiveServer, make_settings

FUZZ_KB = "fuzz-kb-7f3a"
MAX_EXAMPLES = 15  # per operation; ~20 operations keep the run near a minute


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # max_tokens=4: the server caps every request at it, so chat routes can be fuzzed without long generations.
    with LiveServer(make_settings(tmp_path_factory.mktemp("fuzz") / "data", max_tokens=4)) as server:
        with httpx.Client(base_url=server.url, timeout=300) as c:
            # One real KB with a file so fuzzed KB routes also reach search/chat code, not only 404s.
            assert c.post("/api/kb", json={"name": FUZZ_KB}).status_code == 201
            r = c.post(f"/api/kb/{FUZZ_KB}/files", params={"wait": "true"},
                       files={"files": ("notes.md", b"# Notes\n\nThe fuzz knowledge base mentions otters.\n")})
            assert r.status_code == 200, r.text
            # Warm the model up so the first fuzzed chat does not pay for loading it.
            r = c.post("/api/chat", json={"prompt": "hi"})
            assert r.status_code == 200, r.text
        yield server


def test_no_server_errors(fuzz_server: LiveServer) -> None:
    """Every operation gets valid and invalid generated requests; any 5xx (or traceback text) fails.

    The operations are driven through schemathesis' strategies directly: its pytest integration
    (``schemathesis.pytest.from_fixture``) breaks on pytest 9 (it writes ``request.node._nodeid``)."""
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    failures: list[str] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    for op in operations:
        strategy = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))

        @given(case=strategy)
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def check(case: schemathesis.Case) -> None:
            response = case.call(timeout=120)
            case.validate_response(response, checks=[not_a_server_error])
            assert "Traceback" not in response.text, response.text

        try:
            check()
        except Exception as e:  # collect every failing operation, then report them together
            failures.append(f"{op.label}: {type(e).__name__}: {str(e)[:2000]}")
    assert not failures, "\n\n".join(failures)
