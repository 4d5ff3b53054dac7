"""End to end: MLflow's web UI in a real headless Chromium (Debian's chromium + chromium-driver).

The test logs an experiment, a run with a metric and a parameter, and an artifact
through the API, then opens the experiments page, the run page and the artifact
view in the browser, as a data scientist would. Every response the pages load is
read from Chrome's performance log (CDP Network events): none may fail with a 4xx
or 5xx beyond the ones MLflow's UI itself expects. A screenshot of each page goes
to .build/screenshots/ (CI uploads the folder).

Targets are a parametrised fixture: the dev stack over plain HTTP, and the prod stack
through its HTTPS front door with a logged-in user: the basic-auth `Authorization` a
browser sends after the login prompt (applied with CDP `Network.setExtraHTTPHeaders`),
and the stack's CA trusted (the server's key, verified against `ca_certificate`, is the
one key Chromium accepts).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import docker
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mlflow.tracking import MlflowClient
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service

from tests import e2e
from tools.stack_config import PROJECT_DIR

pytestmark = pytest.mark.docker

SCREENSHOTS = PROJECT_DIR / ".build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
# What headless Chromium needs on a machine without a GPU or outside network: no
# sandbox as root, and none of the background connections a closed network refuses.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1800",
)
PAGE_TIMEOUT = 60
ARTIFACT_TEXT = "hello from the browser test"


@dataclass
class UiTarget:
    """One way a browser reaches a stack's UI."""

    name: str
    base_url: str
    deployed: e2e.Deployed
    # Sent with every request, as a browser does after a basic-auth prompt.
    headers: dict[str, str] = field(default_factory=dict)
    # A CA the browser must trust (the front door's), or None for plain HTTP.
    ca_file: Path | None = None
    auth: tuple[str, str] | None = None


@dataclass
class Seeded:
    experiment_id: str
    experiment_name: str
    run_id: str
    run_name: str


def _dev_target() -> Iterator[UiTarget]:
    with e2e.stack("dev") as deployed:
        e2e.wait_until_serving(deployed.tracking_uri)
        yield UiTarget("dev", deployed.tracking_uri, deployed)


# Own host ports: the HTTPS tests' prod stack uses 8443/8080.
PROD_UI_OVERRIDES = {"publicHost": "localhost", "httpsPort": 6443, "httpPort": 6080, "bindAddress": "127.0.0.1"}


def _prod_target() -> Iterator[UiTarget]:
    with e2e.stack("prod", PROD_UI_OVERRIDES) as deployed, tempfile.TemporaryDirectory() as directory:
        auth = (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))
        with e2e.trusting(deployed, Path(directory), auth) as ca_file:
            e2e.wait_until_serving(deployed.tracking_uri, auth=auth)
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            yield UiTarget(
                "prod",
                deployed.tracking_uri,
                deployed,
                headers={"Authorization": f"Basic {token}"},
                ca_file=ca_file,
                auth=auth,
            )


TARGETS: dict[str, Callable[[], Iterator[UiTarget]]] = {"dev": _dev_target, "prod": _prod_target}


def _trusted_key(target: UiTarget) -> str:
    """The served key's SPKI hash, after Python verified its chain against the stack's CA."""
    address = urlsplit(target.base_url)
    context = ssl.create_default_context(cafile=str(target.ca_file))
    with (
        socket.create_connection((address.hostname, address.port or 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=address.hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module", params=sorted(TARGETS))
def target(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> Iterator[UiTarget]:
    for missing in (CHROMIUM, CHROMEDRIVER):
        if not Path(missing).exists():
            pytest.fail(f"{missing} is missing: `apt-get install -y chromium chromium-driver` (CI's .ci/run does)")
    yield from TARGETS[request.param]()


@pytest.fixture(scope="module")
def seeded(target: UiTarget, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    if target.auth:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = target.auth
    client = MlflowClient(target.deployed.tracking_uri)
    name = f"ui-e2e-{int(time.time())}"
    experiment_id = client.create_experiment(name)
    run = client.create_run(experiment_id, run_name="browser-run")
    client.log_param(run.info.run_id, "optimizer", "adam-ui")
    client.log_metric(run.info.run_id, "ui_accuracy", 0.9377)
    notes = tmp_path_factory.mktemp("ui") / "hello.txt"
    notes.write_text(ARTIFACT_TEXT + "\n", encoding="utf-8")
    client.log_artifact(run.info.run_id, str(notes), artifact_path="notes")
    client.set_terminated(run.info.run_id)
    return Seeded(experiment_id, name, run.info.run_id, "browser-run")


@pytest.fixture
def browser(target: UiTarget) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    if target.ca_file is not None:
        # Chromium reads trust from the user's NSS database, which a test should not touch:
        # it accepts exactly the key Python verified against the stack's CA, nothing else.
        flags.append(f"--ignore-certificate-errors-spki-list={_trusted_key(target)}")
    for flag in flags:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        driver.execute_cdp_cmd("Network.enable", {})
        if target.headers:
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": target.headers})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _responses(driver: webdriver.Chrome) -> list[tuple[int, str]]:
    """(status, URL) of every response since the last call, from the performance log."""
    found = []
    for entry in driver.get_log("performance"):  # type: ignore[no-untyped-call]
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.responseReceived":
            response = message["params"]["response"]
            found.append((int(response["status"]), str(response["url"])))
    return found


def _failed(responses: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(status, url) for status, url in responses if status >= 400 and not _expected_failure(status, url)]


def _expected_failure(status: int, url: str) -> bool:
    """Failures MLflow's own UI provokes on a healthy server, each with the reason."""
    # The UI asks for the logged-in user's permissions; without basic auth there is no such endpoint.
    return status == 404 and "/users/current" in url


def _open(driver: webdriver.Chrome, url: str, shows: list[str], screenshot: str) -> float:
    """Loads `url` and waits until every text of `shows` is on the page; returns the seconds taken."""
    started = time.monotonic()
    driver.get(url)
    deadline = started + PAGE_TIMEOUT
    missing = list(shows)
    while missing and time.monotonic() < deadline:
        body = driver.find_element("tag name", "body").text
        missing = [text for text in shows if text not in body]
        if missing:
            time.sleep(0.25)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{screenshot}.png"))
    if missing:
        raise TimeoutException(f"{url} did not show {missing} within {PAGE_TIMEOUT}s; screenshot {screenshot}.png")
    return time.monotonic() - started


def test_experiments_page_lists_the_experiment(target: UiTarget, seeded: Seeded, browser: webdriver.Chrome) -> None:
    seconds = _open(browser, f"{target.base_url}/#/experiments", [seeded.experiment_name], f"{target.name}-experiments")
    e2e.report(f"UI ({target.name}): experiments page showed the experiment after {seconds:.1f}s")
    assert _failed(_responses(browser)) == []


def test_run_page_shows_the_metric_and_the_parameter(
    target: UiTarget, seeded: Seeded, browser: webdriver.Chrome
) -> None:
    url = f"{target.base_url}/#/experiments/{seeded.experiment_id}/runs/{seeded.run_id}"
    _open(browser, url, [seeded.run_name, "ui_accuracy", "0.9377", "optimizer", "adam-ui"], f"{target.name}-run")
    assert _failed(_responses(browser)) == []


def test_the_artifact_opens_in_the_artifact_view(target: UiTarget, seeded: Seeded, browser: webdriver.Chrome) -> None:
    url = f"{target.base_url}/#/experiments/{seeded.experiment_id}/runs/{seeded.run_id}/artifacts/notes/hello.txt"
    _open(browser, url, ["hello.txt", ARTIFACT_TEXT], f"{target.name}-artifact")
    responses = _responses(browser)
    # The text came from the server through the artifact proxy, not from a cache.
    assert any(status == 200 and ("/get-artifact" in url or "/mlflow-artifacts/" in url) for status, url in responses)
    assert _failed(responses) == []


def test_a_failing_request_would_be_seen(target: UiTarget, browser: webdriver.Chrome) -> None:
    """The check above is live: a request that fails shows up in the log it reads."""
    missing = f"{target.base_url}/ajax-api/2.0/mlflow/experiments/get?experiment_id=987654321"
    browser.get(missing)
    # Chrome also asks for /favicon.ico when it opens a URL that is not a page: not MLflow's UI.
    failed = [(status, url) for status, url in _failed(_responses(browser)) if not url.endswith("/favicon.ico")]
    assert failed == [(404, missing)]
