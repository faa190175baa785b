"""The OpenAPI document, the docs page in a real browser, and schemathesis against the live service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from helpers import report, service_config
from openapi_spec_validator import validate
from service_process import ServiceProcess

from job_service import OPENAPI, create_app

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "artifacts"


async def test_the_document_is_valid_openapi(client):
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    validate(document)
    assert document["openapi"].startswith("3.")


@pytest.mark.parametrize("backend", ["tinydb"])
def test_every_route_of_the_router_is_in_the_document(make_config):
    app = create_app(make_config())
    document = orjson.loads(app[OPENAPI])
    routes = {
        (route.method.lower(), route.resource.canonical) for route in app.router.routes() if route.method != "HEAD"
    }
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert routes == documented
    assert len(routes) == 52  # 23 original operations, 26 for datastores, executor, notifications, audit
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "500" in operation["responses"], (method, path)


async def test_the_documented_schemas_are_the_handlers_schemas(client):
    document = await (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert schemas["JobParameters"]["required"] == ["operation", "target"]
    assert schemas["JobParameters"]["additionalProperties"] is False
    assert "bumpToVersion" in schemas["JobParameters"]["properties"]
    assert schemas["BumpManifesto"]["properties"]["updateType"]["nullable"] is True
    post = document["paths"]["/jobs"]["post"]
    assert set(post["responses"]) == {"200", "400", "401", "403", "408", "413", "415", "500", "503", "507"}
    assert post["responses"]["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Message"}


async def test_the_docs_assets_are_served_from_the_package_and_nothing_else(client):
    assert (await client.get("/docs/assets/swagger-ui-bundle.js")).status == 200
    for name in ("index.html", "..%2F..%2Fjob_service.py", "swagger-ui.js.map"):
        response = await client.get(f"/docs/assets/{name}")
        assert response.status == 404


def chromium_or_skip() -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: install Debian's chromium ({CHROMIUM})")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}")


@pytest.mark.parametrize("backend", ["tinydb"])
async def test_the_docs_page_renders_every_route_offline_in_chromium(client):
    chromium_or_skip()
    from playwright.async_api import async_playwright

    base = str(client.make_url("")).rstrip("/")
    document = await (await client.get("/openapi.json")).json()
    operations = [(method.upper(), path) for path, ops in document["paths"].items() for method in ops]
    requested: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 2400})
        page.on("request", lambda request: requested.append(request.url))
        await page.goto(f"{base}/docs")
        await page.wait_for_function(f"document.querySelectorAll('.opblock').length >= {len(operations)}")
        rendered = await page.eval_on_selector_all(
            ".opblock-summary",
            "blocks => blocks.map(b => [b.querySelector('.opblock-summary-method').textContent,"
            " b.querySelector('.opblock-summary-path').getAttribute('data-path')])",
        )
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "docs.png"
        await page.screenshot(path=str(screenshot), full_page=True)
        await browser.close()
    report(f"artifact: screenshot of /docs in Chromium: {screenshot}")
    assert sorted(tuple(block) for block in rendered) == sorted(operations)
    left_the_machine = [url for url in requested if not url.startswith(base) and not url.startswith("data:")]
    assert left_the_machine == []
    assert f"{base}/openapi.json" in requested


async def test_schemathesis_finds_nothing(storage, tmp_path, backend):
    """Server errors, status codes and response bodies against the document, over every operation."""
    service = ServiceProcess(tmp_path, service_config(storage, tmp_path / "input", jobs={"bump_enabled": True}))
    await service.start()
    try:
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"), "run", f"{service.url}/openapi.json",
                "--checks", "not_a_server_error,status_code_conformance,response_schema_conformance",
                "--max-examples", "60", "--workers", "1", "--no-color", "--seed", "1",
            ],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(Path(__file__).parent)},
        )  # fmt: skip
    finally:
        service.stop()
    assert result.returncode == 0, result.stdout[-5000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated and generated[1] == generated[2], result.stdout[-2000:]
    report(f"schemathesis on {backend}: {generated[1]} cases generated, {generated[2]} passed, 0 failures")
