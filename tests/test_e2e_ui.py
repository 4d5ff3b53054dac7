"""End to end: MLflow's web UI in a real headless Chromium (Debian's chromium + chromium-driver).

The test logs an experiment, a run with a metric and a parameter, and an artifact
through the API, then opens the experiments page, the run page and the artifact
view in the browser, as a data scientist would. Every response the pages load is
read from Chrome's performance log (CDP Network events): none may fail with a 4xx
or 5xx beyond the ones MLflow's UI itself expects. A screenshot of each page goes
to .build/screenshots/ (CI uploads the folder).

Then it writes through the UI as a person would: creates an experiment, and renames a
run seeded through the REST API; both are read back through the API. The browser sends
the page's origin on each write, and MLflow 3.x refuses a write whose origin is neither
a localhost one nor among `--cors-allowed-origins` (403 "Cross-origin request blocked").

Targets are a parametrised fixture: the dev stack over plain HTTP, and the staging and
prod stacks through their HTTPS front doors with a logged-in user: the basic-auth
`Authorization` a browser sends after the login prompt (applied with CDP
`Network.setExtraHTTPHeaders`), and the stack's CA trusted (the server's key, verified
against `ca_certificate`, is the one key Chromium accepts). Staging and prod keep their
real public hosts, which no DNS here knows: Chromium maps them to 127.0.0.1 with
`--host-resolver-rules`, this process with `e2e.resolving`, so the browser sends the
origin it sends in production (a `localhost` public host would hide a refused origin
behind MLflow's localhost exemption). Prod's front door is on 443 (its origin has no
port), staging's on another port (its origin names it).
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mlflow.tracking import MlflowClient
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

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
# How long a write made in the UI may take to show in the API.
WRITE_TIMEOUT = 30
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
    # The public host Chromium must resolve to 127.0.0.1 (no DNS here knows it), if any.
    mapped_host: str | None = None


@dataclass
class Seeded:
    experiment_id: str
    experiment_name: str
    run_id: str
    run_name: str


def _dev_target() -> Iterator[UiTarget]:
    # The committed dev stack, shared with tests/test_e2e_tracking.py (one deploy for both).
    deployed = e2e.shared("dev")
    e2e.wait_until_serving(deployed.tracking_uri)
    yield UiTarget("dev", deployed.tracking_uri, deployed)


# The committed public hosts, on loopback. Prod on 443 (as deployed: the origin has no
# port); staging on ports of its own (the origin names the port).
PROD_UI_OVERRIDES = {"httpsPort": 443, "httpPort": 80, "bindAddress": "127.0.0.1"}
STAGING_UI_OVERRIDES = {"httpsPort": 4443, "httpPort": 4080, "bindAddress": "127.0.0.1"}
FRONT_DOORS = {
    "prod": "https://mlflow.example.internal",
    "staging": "https://mlflow.staging.example.internal:4443",
}


def _front_door_target(stack: str, overrides: Mapping[str, object]) -> Iterator[UiTarget]:
    """A shared stack through its front door, logged in as the admin, on its own public host."""
    with e2e.stack(stack, overrides) as deployed, tempfile.TemporaryDirectory() as directory:
        assert deployed.tracking_uri == FRONT_DOORS[stack]
        host = str(urlsplit(deployed.tracking_uri).hostname)
        auth = (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))
        with e2e.resolving({host: "127.0.0.1"}), e2e.trusting(deployed, Path(directory), auth) as ca_file:
            e2e.wait_until_serving(deployed.tracking_uri, auth=auth)
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            yield UiTarget(
                stack,
                deployed.tracking_uri,
                deployed,
                headers={"Authorization": f"Basic {token}"},
                ca_file=ca_file,
                auth=auth,
                mapped_host=host,
            )


TARGETS: dict[str, Callable[[], Iterator[UiTarget]]] = {
    "dev": _dev_target,
    "staging": lambda: _front_door_target("staging", STAGING_UI_OVERRIDES),
    "prod": lambda: _front_door_target("prod", PROD_UI_OVERRIDES),
}


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
    if target.mapped_host is not None:
        flags.append(f"--host-resolver-rules=MAP {target.mapped_host} 127.0.0.1")
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
    return [(status, url) for _, status, url in _exchanges(_events(driver))]


def _events(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The CDP events Chrome logged since the last call."""
    return [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]  # type: ignore[no-untyped-call]


def _exchanges(events: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """(method, status, URL) of every response among `events` (its request's event among them too)."""
    methods: dict[str, str] = {}
    found = []
    for message in events:
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            methods[params["requestId"]] = str(params["request"]["method"])
        elif message.get("method") == "Network.responseReceived":
            response = params["response"]
            found.append((methods.get(params["requestId"], "?"), int(response["status"]), str(response["url"])))
    return found


def _failed(responses: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(status, url) for status, url in responses if status >= 400 and not _expected_failure(status, url)]


def _expected_failure(status: int, url: str) -> bool:
    """Failures MLflow's own UI provokes on a healthy server, each with the reason."""
    # The UI asks for the logged-in user's permissions; without basic auth there is no such endpoint.
    if status == 404 and "/users/current" in url:
        return True
    # The create-experiment dialog checks that the name is free: "not found" is the answer it hopes for.
    return status == 404 and "/experiments/get-by-name" in url


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


# --- writing through the UI ---------------------------------------------------------------------


def _element(driver: webdriver.Chrome, locator: str, by: str = By.CSS_SELECTOR) -> WebElement:
    """The element once it is there and clickable."""
    found: WebElement = WebDriverWait(driver, PAGE_TIMEOUT).until(
        expected_conditions.element_to_be_clickable((by, locator))
    )
    return found


def _dialog_button(driver: webdriver.Chrome, label: str) -> WebElement:
    return _element(driver, f"//div[@role='dialog']//button[normalize-space()='{label}']", By.XPATH)


def _until_written(
    driver: webdriver.Chrome, target: UiTarget, read_back: Callable[[], bool], action: str, write: str
) -> list[tuple[str, int, str]]:
    """Waits until the API reads back what the UI wrote and the browser has logged the answer
    to its `write` request (the server may commit before the browser sees the response);
    returns every exchange the page had meanwhile.

    On failure the message names the writes the server refused and what the open dialog
    says (MLflow's own "Cross-origin request blocked" when the origin is refused).
    """
    deadline = time.monotonic() + WRITE_TIMEOUT
    events: list[dict[str, Any]] = []
    written = False
    while True:
        events += _events(driver)
        exchanges = _exchanges(events)
        written = written or read_back()
        if written and _writes(exchanges, write):
            return exchanges
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    exchanges = _exchanges(events + _events(driver))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot = f"{target.name}-{action.replace(' ', '-')}-failed"
    driver.save_screenshot(str(SCREENSHOTS / f"{screenshot}.png"))
    refused = [(method, status, url) for method, status, url in exchanges if method != "GET" and status >= 400]
    dialogs = [element.text for element in driver.find_elements(By.CSS_SELECTOR, "[role=dialog]")]
    raise AssertionError(
        f"{target.name}: '{action}' in the UI did not show in the API within {WRITE_TIMEOUT}s; "
        f"writes refused: {refused}; the dialog says: {dialogs}; screenshot {screenshot}.png"
    )


def _api(target: UiTarget, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One REST call as the admin, outside the browser (no Origin: never a cross-origin write)."""
    response = requests.post(f"{target.base_url}/api/2.0/mlflow/{path}", json=body, auth=target.auth, timeout=30)
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    found: dict[str, Any] = response.json()
    return found


def _writes(exchanges: list[tuple[str, int, str]], path: str) -> list[tuple[str, int]]:
    return [(method, status) for method, status, url in exchanges if urlsplit(url).path.endswith(path)]


def test_the_ui_creates_an_experiment(target: UiTarget, browser: webdriver.Chrome) -> None:
    name = f"created-in-the-ui-{target.name}-{int(time.time())}"
    client = MlflowClient(target.deployed.tracking_uri)
    browser.get(f"{target.base_url}/#/experiments")
    _element(browser, "[data-testid=create-experiment-button]").click()
    _element(browser, "#experimentName").send_keys(name)
    _dialog_button(browser, "Create").click()
    write = "/ajax-api/2.0/mlflow/experiments/create"
    exchanges = _until_written(
        browser, target, lambda: client.get_experiment_by_name(name) is not None, "create", write
    )
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    assert experiment.lifecycle_stage == "active"
    assert _writes(exchanges, write) == [("POST", 200)]
    assert _failed([(status, url) for _, status, url in exchanges]) == []
    e2e.report(f"UI ({target.name}): created experiment {name} (id {experiment.experiment_id}) from the browser")


def test_the_ui_renames_a_run(target: UiTarget, browser: webdriver.Chrome) -> None:
    stamp = int(time.time())
    experiment = _api(target, "experiments/create", {"name": f"rename-in-the-ui-{target.name}-{stamp}"})
    created = _api(target, "runs/create", {"experiment_id": experiment["experiment_id"], "run_name": "before-rename"})
    run_id = str(created["run"]["info"]["run_id"])
    new_name = f"renamed-in-the-ui-{stamp}"
    client = MlflowClient(target.deployed.tracking_uri)

    url = f"{target.base_url}/#/experiments/{experiment['experiment_id']}/runs/{run_id}"
    _open(browser, url, ["before-rename"], f"{target.name}-rename")
    _element(browser, "[data-testid=overflow-menu-trigger]").click()
    _element(browser, "[data-testid=overflow-rename-button]").click()
    field = _element(browser, "[data-testid=rename-modal-input]")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(new_name)
    _dialog_button(browser, "Save").click()
    write = "/ajax-api/2.0/mlflow/runs/update"
    exchanges = _until_written(
        browser, target, lambda: client.get_run(run_id).info.run_name == new_name, "rename", write
    )
    run = client.get_run(run_id)
    assert (run.info.run_name, run.data.tags["mlflow.runName"]) == (new_name, new_name)
    assert _writes(exchanges, write) == [("POST", 200)]
    assert _failed([(status, url) for _, status, url in exchanges]) == []
    e2e.report(f"UI ({target.name}): renamed run {run_id} to {new_name} from the browser")
