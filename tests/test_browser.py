"""The dev page and the API reference as a person uses them: ``otpsvc dev`` started as the
README says, pages opened in Debian's Chromium (driven by Selenium through chromium-driver;
nothing downloads a browser), accessibility checked with axe-core from the npm registry.

Screenshots are saved to ``OTPSVC_TEST_ARTIFACTS`` (default ``test-artifacts/``). Without a
Chromium and its driver the tests are skipped, unless ``OTPSVC_REQUIRE_BROWSER=1`` (as in CI),
where that is a failure; the same goes for axe-core (``OTPSVC_AXE_JS``, or
``.ci/node/node_modules/axe-core/axe.min.js`` as ``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otpsvc.dev.redis_server import free_port
from tests.test_dev_mode import wait_for

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("OTPSVC_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(os.environ.get("OTPSVC_TEST_ARTIFACTS", ROOT / "test-artifacts"))
AXE_JS = Path(
    os.environ.get(
        "OTPSVC_AXE_JS", ROOT / ".ci" / "node" / "node_modules" / "axe-core" / "axe.min.js"
    )
)
WAIT = 15


def _missing(what: str) -> None:
    if REQUIRED:
        pytest.fail(f"{what} is required here (OTPSVC_REQUIRE_BROWSER=1)")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        _missing("Chromium and chromium-driver (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(WAIT)
    try:
        yield session
    finally:
        session.quit()


def _otpsvc_dev(state: Path, **settings: str) -> Iterator[str]:
    """``otpsvc dev`` on a free port with ``settings`` and nothing else of ours set; its base
    URL while it runs."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTPSVC_")}
    env.update(XDG_STATE_HOME=str(state), **settings)
    log = (state / "dev.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "otpsvc", "dev", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/healthz")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory) -> Iterator[str]:
    """``otpsvc dev`` as a developer starts it: nothing set, the bundled Redis."""
    yield from _otpsvc_dev(tmp_path_factory.mktemp("state"))


def _screenshot(browser, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert browser.save_screenshot(str(path))
    return path


def _axe_violations(browser) -> list[dict]:
    """axe-core's serious and critical violations on the current page."""
    if not AXE_JS.exists():
        _missing(f"axe-core ({AXE_JS}; npm install axe-core)")
    browser.execute_script(AXE_JS.read_text(encoding="utf-8"))
    result = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact,"
        " nodes: v.nodes.map(n => n.target.join(' '))}))))"
        ".catch(e => done([{id: 'axe-error', impact: 'critical', nodes: [String(e)]}]));"
    )
    return [v for v in result if v["impact"] in ("serious", "critical")]


def test_dev_page_a_verification_from_start_to_approved(browser, dev_server: str):
    """Open /dev, start from the form, see the call appear without a reload, read the code
    from the page, check it from the page, see "approved"."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(dev_server)  # / redirects to /dev in dev mode
    assert browser.current_url.endswith("/dev")
    wait.until(ec.text_to_be_present_in_element((By.ID, "live-text"), "live"))
    assert browser.find_element(By.ID, "no-calls").is_displayed()
    browser.execute_script("window.otpsvcTestMarker = 'same page';")

    phone = browser.find_element(By.ID, "start-phone")
    phone.clear()
    phone.send_keys("+2348031234567")
    browser.find_element(By.ID, "start-button").click()
    card = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#calls li.call")))
    wait.until(ec.text_to_be_present_in_element((By.ID, "start-result"), "201"))
    # The call came in by the stream: the page was not reloaded.
    assert browser.execute_script("return window.otpsvcTestMarker") == "same page"
    assert "+234*******567" in card.text
    assert card.get_attribute("data-status") == "pending"
    code = card.find_element(By.CSS_SELECTOR, ".code").text
    assert re.fullmatch(r"\d{6}", code)
    spoken = card.find_element(By.CSS_SELECTOR, ".spoken")
    assert spoken.get_attribute("lang") == "en-US"
    assert card.find_element(By.CSS_SELECTOR, "button.listen").is_enabled()

    verification_id = browser.find_element(By.ID, "check-id").get_attribute("value")
    assert re.fullmatch(r"[0-9a-f]{36}", verification_id)
    browser.find_element(By.ID, "check-code").send_keys(code)
    browser.find_element(By.ID, "check-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "check-result"), "approved"))
    wait.until(
        ec.presence_of_element_located(
            (
                By.CSS_SELECTOR,
                f'#calls li.call[data-id="{verification_id}"][data-status="approved"]',
            )
        )
    )
    assert browser.execute_script("return window.otpsvcTestMarker") == "same page"
    shot = _screenshot(browser, "dev-page.png")
    assert shot.stat().st_size > 10_000
    assert _axe_violations(browser) == []


def test_dev_page_fault_injection_from_the_page(browser, dev_server: str):
    """Pick "busy" for the next call on the page, start: the call's card shows the fault, and
    its delivery report comes back as a provider's webhook would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(dev_server + "/dev")
    wait.until(ec.text_to_be_present_in_element((By.ID, "live-text"), "live"))
    Select(browser.find_element(By.ID, "fault-kind")).select_by_value("busy")
    browser.find_element(By.ID, "fault-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "fault-result"), "the next call: busy"))
    phone = browser.find_element(By.ID, "start-phone")
    phone.clear()
    phone.send_keys("+2348031234500")
    browser.find_element(By.ID, "start-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "start-result"), "201"))
    card = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#calls li.call .badge.fault"))
    )
    assert card.text == "fault: busy"
    # The report arrives a moment later through the console's webhook and shows on the card.
    wait.until(
        ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#calls li.call .delivery"), "delivery: busy"
        )
    )
    browser.find_element(By.ID, "fault-clear").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "fault-result"), "no faults"))
    assert _axe_violations(browser) == []


def test_dev_page_keypress_call_pressed_from_the_page(browser, dev_server: str):
    """A keypress call gets "Press 1" and "Press 9"; pressing 1 approves it, as the person
    pressing 1 on the phone would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(dev_server + "/dev")
    wait.until(ec.text_to_be_present_in_element((By.ID, "live-text"), "live"))
    Select(browser.find_element(By.ID, "start-mode")).select_by_value("keypress")
    Select(browser.find_element(By.ID, "start-locale")).select_by_value("fr")
    phone = browser.find_element(By.ID, "start-phone")
    phone.clear()
    phone.send_keys("+2348031234511")
    browser.find_element(By.ID, "start-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "start-result"), "201"))
    verification_id = browser.find_element(By.ID, "check-id").get_attribute("value")
    card_selector = f'#calls li.call[data-id="{verification_id}"]'
    card = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, card_selector)))
    assert card.find_element(By.CSS_SELECTOR, ".spoken").get_attribute("lang") == "fr-FR"
    assert card.find_elements(By.CSS_SELECTOR, ".code") == []
    assert _axe_violations(browser) == []
    wait.until(lambda b: _click(b, card_selector, "Press 1"))
    wait.until(
        ec.presence_of_element_located(
            (By.CSS_SELECTOR, card_selector + '[data-status="approved"]')
        )
    )


def test_dev_page_match_call_keyed_from_the_keypad(browser, dev_server: str):
    """A match start shows the digits for the screen; the call's card shows them and a keypad:
    other digits are refused (an attempt used), the digits shown approve."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(dev_server + "/dev")
    wait.until(ec.text_to_be_present_in_element((By.ID, "live-text"), "live"))
    Select(browser.find_element(By.ID, "start-mode")).select_by_value("match")
    keyed = {}
    for phone, right in (("+2348031234522", False), ("+2348031234533", True)):
        field = browser.find_element(By.ID, "start-phone")
        field.clear()
        field.send_keys(phone)
        browser.find_element(By.ID, "start-button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "start-result"), "show the person"))
        said = browser.find_element(By.ID, "start-result").text
        digits = re.search(r"show the person (\d\d)", said).group(1)
        verification_id = browser.find_element(By.ID, "check-id").get_attribute("value")
        card_selector = f'#calls li.call[data-id="{verification_id}"]'
        # Heard to the end (the console's report) before keying, as a person would.
        wait.until(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, card_selector + " .delivery"), "completed"
            )
        )
        card = browser.find_element(By.CSS_SELECTOR, card_selector)
        assert card.find_element(By.CSS_SELECTOR, ".code").text == digits
        keys = digits if right else ("12" if digits != "12" else "34")
        wait.until(lambda b, s=card_selector, k=keys: _key(b, s, k))
        want = "approved" if right else "wrong"
        wait.until(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, card_selector + " .press-result"), f"{keys}: {want}"
            )
        )
        keyed[want] = card_selector
    wait.until(
        ec.presence_of_element_located(
            (By.CSS_SELECTOR, keyed["approved"] + '[data-status="approved"]')
        )
    )
    assert browser.find_elements(By.CSS_SELECTOR, keyed["wrong"] + '[data-status="pending"]')
    assert _axe_violations(browser) == []


def _key(browser, card_selector: str, digits: str) -> bool:
    """Key digits on a card's keypad and send them; False (to be tried again) when the list was
    redrawn meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        card = browser.find_element(By.CSS_SELECTOR, card_selector)
        pad = card.find_element(By.CSS_SELECTOR, "input.keypad")
        pad.clear()
        pad.send_keys(digits)
        if pad.get_attribute("value") != digits:
            return False
        button = next(
            b for b in card.find_elements(By.TAG_NAME, "button") if "Key digits" in b.text
        )
        button.click()
    except StaleElementReferenceException:
        return False
    return True


def _click(browser, card_selector: str, label: str) -> bool:
    """Click a card's button; False (to be tried again) when the list was redrawn meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        card = browser.find_element(By.CSS_SELECTOR, card_selector)
        button = next(b for b in card.find_elements(By.TAG_NAME, "button") if label in b.text)
        button.click()
    except StaleElementReferenceException:
        return False
    return True


def test_docs_page_lists_the_start_operation(browser, dev_server: str):
    """/docs renders the reference from openapi.yaml, its assets from the package."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(dev_server + "/docs")
    operation = WebDriverWait(browser, WAIT).until(
        ec.presence_of_element_located(
            (By.CSS_SELECTOR, '.opblock-summary-path[data-path="/otp/start"]')
        )
    )
    assert operation.text.strip() == "/otp/start"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    _screenshot(browser, "docs-page.png")


INSIGHTS_KEY = "ops-" + "Qm7vT2xK9pL4wR8nZ3cF6hJ1dG5sB0aY"
APP_KEY = "app-" + "Vn4kP8rT1xM6qW3zL9cH2jF7dB5sG0aY"


@pytest.fixture(scope="module")
def insights_server(tmp_path_factory) -> Iterator[str]:
    """``otpsvc dev`` with a price file and an operator key: it folds the funnel itself."""
    state = tmp_path_factory.mktemp("insights")
    prices = state / "prices.toml"
    prices.write_text('currency = "EUR"\n[console.voice]\ndefault = "0.0120"\n')
    yield from _otpsvc_dev(
        state,
        OTPSVC_API_KEYS=f"shop:{APP_KEY}",
        OTPSVC_OPERATOR_KEYS=f"ops:{INSIGHTS_KEY}",
        OTPSVC_CURRENCY="EUR",
        OTPSVC_PRICES_FILE=str(prices),
        # The conversion rule judges a send a second after it (the page marks what it
        # suspended).
        OTPSVC_FRAUD_GRACE="1",
    )


def _started(base: str, phone: str) -> dict[str, object]:
    """A start as the app's backend makes it; the verification."""
    import requests

    auth = {"Authorization": f"Bearer {APP_KEY}"}
    started = requests.post(f"{base}/otp/start", json={"phone": phone}, headers=auth, timeout=10)
    assert started.status_code == 201, started.text
    return dict(started.json())


def _twenty_verifications_ten_approved(base: str) -> None:
    import requests

    auth = {"Authorization": f"Bearer {APP_KEY}"}
    for i in range(20):
        phone = f"+2348031239{i:03d}"
        started = _started(base, phone)
        if i % 2:
            continue
        calls = requests.get(f"{base}/dev/calls", params={"phone": phone}, headers=auth, timeout=10)
        code = calls.json()["calls"][0]["code"]
        body = {"id": started["id"], "code": code}
        assert requests.post(f"{base}/otp/check", json=body, headers=auth, timeout=10).ok


def test_insights_page_shows_the_funnel(browser, insights_server: str):
    """20 verifications at 0.012, 10 approved: the page shows 20, 10, 50 %, 0.24 EUR and 0.024
    EUR per approval, the charts and a table per group; the key never reaches an address."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _twenty_verifications_ten_approved(insights_server)
    wait = WebDriverWait(browser, WAIT)
    browser.get(insights_server + "/insights")
    assert _axe_violations(browser) == []
    browser.find_element(By.ID, "key").send_keys(INSIGHTS_KEY)

    def shown(b) -> bool:  # the worker folds within a second or so: ask until it has
        b.find_element(By.ID, "show").click()
        WebDriverWait(b, WAIT).until(ec.text_to_be_present_in_element((By.ID, "status"), "Updated"))
        totals = (b.find_element(By.ID, f"total-{n}").text for n in ("verifications", "approved"))
        return tuple(totals) == ("20", "10")

    WebDriverWait(browser, 30, poll_frequency=1).until(shown)
    figures = {
        name: browser.find_element(By.ID, f"total-{name}").text
        for name in ("verifications", "approved", "conversion", "spend", "cost")
    }
    assert figures == {
        "verifications": "20",
        "approved": "10",
        "conversion": "50.0 %",
        "spend": "0.24 EUR",
        "cost": "0.024 EUR",
    }
    country = browser.find_element(By.ID, "by-country")
    cells = [c.text for c in country.find_elements(By.CSS_SELECTOR, "tbody tr > *")]
    # (Answered, the fourth, counts the console's reports of calls picked up as they come.)
    assert [cells[i] for i in (0, 1, 2, 4, 5, 6)] == ["NG", "20", "20", "10", "50.0 %", "0.24"]
    steps = browser.find_element(By.ID, "by-step").find_element(By.CSS_SELECTOR, "tbody th")
    assert steps.text == "0"
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#spend-chart canvas")))
    assert INSIGHTS_KEY not in browser.current_url
    assert "Conversion by hour" in browser.find_element(By.ID, "conversion-chart").get_attribute(
        "aria-label"
    )
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert _axe_violations(browser) == []
    wide = browser.execute_script(
        "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect()"
        ".right > document.documentElement.clientWidth + 1).map(e => e.tagName + '#' + e.id"
        " + '.' + e.className).slice(0, 5)"
    )
    assert wide == []  # nothing wider than the window
    shot = _screenshot(browser, "insights-page.png")
    assert shot.stat().st_size > 10_000


def test_insights_page_marks_the_prefixes_the_conversion_rule_suspended(
    browser, insights_server: str
):
    """20 calls to +234 905 whose codes are never entered: the rule (monitor mode, as shipped)
    suspends the prefix, and the page's prefix table marks it."""
    import requests
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    for i in range(20):
        _started(insights_server, f"+234905{100 + i}1234")

    def listed() -> list[dict[str, object]]:
        answer = requests.get(
            f"{insights_server}/insights/suspensions",
            headers={"Authorization": f"Bearer {INSIGHTS_KEY}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return list(answer.json()["suspensions"])

    deadline = time.monotonic() + 30
    while not listed() and time.monotonic() < deadline:
        time.sleep(0.5)
    [held] = listed()
    assert (held["destination"], held["channel"], held["client"]) == ("+234905", "voice", "shop")
    assert (held["sends"], held["approved"]) == (20, 0)
    browser.get(insights_server + "/insights")
    browser.find_element(By.ID, "key").send_keys(INSIGHTS_KEY)
    browser.find_element(By.ID, "show").click()
    WebDriverWait(browser, WAIT).until(
        ec.text_to_be_present_in_element((By.ID, "status"), "Updated")
    )
    assert browser.find_element(By.ID, "suspended-count").text == "1"
    rows = browser.find_elements(By.CSS_SELECTOR, "#by-prefix tbody tr")
    marked = {
        r.find_element(By.TAG_NAME, "th").text: r.find_elements(By.TAG_NAME, "td")[-1].text
        for r in rows
        if "suspended" in (r.get_attribute("class") or "")
    }
    assert list(marked) == ["234905"]
    assert marked["234905"].startswith("voice until ")
    assert marked["234905"].endswith("(shop)")
    assert _axe_violations(browser) == []
