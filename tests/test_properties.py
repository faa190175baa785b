"""Generated bodies and query strings at every endpoint never get a 5xx."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from job_service import OPERATIONS, RELEASE_STATUSES, STATUSES

names = st.one_of(st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True), st.text(max_size=20), st.just("DATASTORE"))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30), names)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
manifestos = st.fixed_dictionaries(
    {},
    optional={
        "version": json_values,
        "description": st.text(max_size=10),
        "releaseTime": st.integers() | json_values,
        "languageCode": st.text(max_size=3),
        "updateType": st.none() | st.text(max_size=5),
        "dataStructureUpdates": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": names,
                    "description": st.text(max_size=5),
                    "operation": st.text(max_size=5),
                    "releaseStatus": st.sampled_from(RELEASE_STATUSES) | st.text(max_size=5),
                },
            ),
            max_size=3,
        ),
    },
)
new_jobs = st.fixed_dictionaries(
    {},
    optional={
        "operation": st.sampled_from(OPERATIONS) | json_values,
        "target": names | json_values,
        "releaseStatus": st.sampled_from(RELEASE_STATUSES) | json_values,
        "description": st.text(max_size=20) | json_values,
        "bumpManifesto": manifestos | json_values,
        "bumpFromVersion": st.text(max_size=5) | json_values,
        "bumpToVersion": st.text(max_size=5) | json_values,
        "extra": json_values,
    },
)
job_updates = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(STATUSES) | json_values,
        "description": st.text(max_size=20) | json_values,
        "log": st.text(max_size=20) | json_values,
        "extra": json_values,
    },
)
maintenance = st.fixed_dictionaries(
    {}, optional={"msg": st.text(max_size=20) | json_values, "paused": json_values, "pause": json_values}
)
bodies = st.one_of(
    st.builds(lambda jobs: {"jobs": jobs}, st.lists(new_jobs | json_values, max_size=4)),
    job_updates,
    maintenance,
    json_values,
).map(lambda body: json.dumps(body).encode()) | st.binary(max_size=64)
query_values = st.sampled_from((*STATUSES, *OPERATIONS, "true", "True", "false", "ADD,REMOVE", "")) | st.text(
    max_size=8
)
query_names = st.sampled_from(["status", "operation", "ignoreCompleted", "other"])
queries = st.lists(st.tuples(query_names, query_values), max_size=4)
#: Any text as one percent-encoded path segment, as a client would send it.
path_names = (names | st.text(max_size=12)).map(lambda text: quote(text, safe=""))
requests = st.one_of(
    st.tuples(st.just("GET"), st.just("/jobs")),
    st.tuples(st.just("POST"), st.just("/jobs")),
    st.tuples(st.sampled_from(["GET", "PUT"]), st.builds("/jobs/{}".format, path_names)),
    st.tuples(st.just("GET"), st.just("/targets")),
    st.tuples(st.just("GET"), st.builds("/targets/{}".format, path_names)),
    st.tuples(st.just("GET"), st.builds("/targets/{}/jobs".format, path_names)),
    st.tuples(st.just("GET"), st.just("/importable-datasets")),
    st.tuples(st.just("DELETE"), st.builds("/importable-datasets/{}".format, path_names)),
    st.tuples(st.sampled_from(["GET", "POST"]), st.just("/maintenance-status")),
    st.tuples(st.just("GET"), st.just("/maintenance-history")),
    st.tuples(st.sampled_from(["GET", "PATCH"]), st.sampled_from(["/health/alive", "/health/ready", "/nowhere"])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests, body=bodies, query=queries)
async def test_no_generated_request_gets_a_server_error(client, request, body, query):
    method, path = request
    url = URL(f"http://{client.host}:{client.port}{path}", encoded=True).update_query(query)
    writes = method in ("POST", "PUT")
    headers = {"Content-Type": "application/json"} if writes else None
    response = await client.session.request(method, url, data=body if writes else None, headers=headers)
    assert response.status < 500, (method, path, query, body, await response.text())
    assert "message" in await response.json() or response.status == 200
