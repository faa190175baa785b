"""The OpenAPI document cannot drift from what the service does."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from helpers import OBSERVED_STATUSES

from job_service import OPENAPI

TESTS = Path(__file__).parent
#: Answers every operation may give without saying so: an unexpected failure, and a method the route lacks.
UNDOCUMENTED_EVERYWHERE = {405, 500}


def ran_the_whole_suite(config: pytest.Config) -> bool:
    option = config.option
    selected = option.keyword or option.markexpr or option.deselect or getattr(option, "lf", False)
    return not selected and [Path(arg).resolve() for arg in config.args] == [TESTS]


@pytest.mark.last
@pytest.mark.parametrize("backend", ["tinydb"])  # the document is the same on every backend
async def test_each_operation_answers_exactly_the_errors_it_documents(client, request):
    if not ran_the_whole_suite(request.config):
        pytest.skip("compares with what the whole suite observed")
    document = orjson.loads(client.app[OPENAPI])
    drift = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            documented = {int(status) for status in operation["responses"] if int(status) >= 400}
            observed = {status for status in OBSERVED_STATUSES[method.upper(), path] if status >= 400}
            for status in sorted((documented ^ observed) - UNDOCUMENTED_EVERYWHERE):
                said = "documented, never observed" if status in documented else "observed, not documented"
                drift.append(f"{method.upper()} {path} {status}: {said}")
    assert not drift, "\n".join(drift)
