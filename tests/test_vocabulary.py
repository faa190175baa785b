"""One vocabulary of statuses and operations, shared by the store, the schemas and the executor."""

from __future__ import annotations

from backends import (
    DATASTORE_OPERATIONS,
    FINAL_STATUSES,
    KEYS_OPERATIONS,
    OPERATIONS,
    REQUIRED_BY_OPERATION,
    STATUSES,
)


def test_the_final_statuses_are_statuses():
    assert set(STATUSES) >= FINAL_STATUSES
    assert STATUSES[-2:] == ("completed", "failed")  # the API lists them last


def test_every_operation_named_by_a_rule_is_an_operation():
    known = {*OPERATIONS, *KEYS_OPERATIONS}
    assert set(REQUIRED_BY_OPERATION) <= known
    assert set(DATASTORE_OPERATIONS) <= known


def test_the_keys_job_names_are_not_among_the_operations_every_executor_parses():
    assert not set(KEYS_OPERATIONS) & set(OPERATIONS)
