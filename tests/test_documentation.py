"""The OpenAPI document cannot drift from what the service does: at the end of a run of the
whole suite, conftest's `pytest_sessionfinish` compares what the tests' clients saw each
route answer with what the document says it answers, and fails the run on any difference."""

from __future__ import annotations

from helpers import documentation_drift

from job_service import openapi_document


def test_the_comparison_names_each_status_observed_undocumented_and_each_documented_never_observed():
    document = openapi_document()
    observed = {
        (method.upper(), path): {int(status) for status in operation["responses"]}
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    assert documentation_drift(document, observed) == []

    observed["GET", "/jobs/{jobId}"] = observed["GET", "/jobs/{jobId}"] - {404} | {418, 500, 405}
    del observed["POST", "/jobs"]  # an operation no test called
    drift = documentation_drift(document, observed)
    assert "GET /jobs/{jobId} 404: documented, never observed" in drift
    assert "GET /jobs/{jobId} 418: observed, not documented" in drift
    assert "POST /jobs 400: documented, never observed" in drift
    assert not [line for line in drift if " 405: " in line or " 500: " in line]  # answers every route may give
