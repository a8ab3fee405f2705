"""The chat page in a real headless Chromium, against a real server's web port.

What is checked is what a person at the page sees.  The tests spread over
the backends (each serves the page and its WebSocket itself).  Outside CI
they are skipped where Chromium, chromedriver or selenium are missing; in CI
(``CI`` set) that is a failure, so that they never silently stop running.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = bool(os.environ.get("CI"))
pytest.importorskip("websockets")
if not IN_CI:
    pytest.importorskip("selenium")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from reactor.backends.base import Server  # noqa: E402
from reactor.config import AccountsConfig  # noqa: E402
from tests.support import LineClient, running_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALLED = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
# The two that show the page's main promises run in the inner loop; the
# rest (a restart, accounts, more windows) are slow.
pytestmark = [
    pytest.mark.skipif(not INSTALLED and not IN_CI,
                       reason="chromium and chromedriver are not installed"),
]
WAIT = 15.0


def page_of(server: Server) -> str:
    """Where a person points the browser: the server's web port."""
    return f"http://127.0.0.1:{server.web_port}/"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if not INSTALLED:  # (in CI: the skip above does not apply)
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed in CI (.ci/run installs them)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", f"--user-data-dir={profile}",
                         "--window-size=900,640"):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def until(driver: webdriver.Chrome, condition: Callable[[Any], object]) -> None:
    WebDriverWait(driver, WAIT).until(condition)


def text_of(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def log_in(driver: webdriver.Chrome, url: str, name: str) -> None:
    driver.get(url)
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "login-button").click()


def logged_in(driver: webdriver.Chrome) -> bool:
    return driver.find_element(By.ID, "chat").is_displayed()


def type_message(driver: webdriver.Chrome, text: str) -> None:
    driver.find_element(By.ID, "draft").send_keys(text + "\n")


def open_conversation(driver: webdriver.Chrome, name: str) -> None:
    driver.find_element(
        By.XPATH, f"//ul[@id='conversations']//button[starts-with(normalize-space(.), '{name}')]"
    ).click()


def test_two_browsers_and_a_terminal_user_chat(browser: webdriver.Chrome) -> None:
    with running_server("threads", web_port=0) as server, LineClient(server.port) as cat:
        url = page_of(server)
        ann = browser.current_window_handle
        log_in(browser, url, "Ann")
        until(browser, logged_in)
        browser.switch_to.new_window("tab")
        bob = browser.current_window_handle
        log_in(browser, url, "Bob")
        until(browser, logged_in)
        cat.send("Cat")
        cat.expect("<User Cat is online.>")
        until(browser, lambda d: "Cat" in text_of(d, "people"))

        type_message(browser, "hello from Bob")  # a broadcast: Everyone is open
        cat.read_until(lambda line: line == '<Broadcast from Bob: "hello from Bob">')
        until(browser, lambda d: "✓ delivered" in text_of(d, "messages"))
        cat.send('chat Ann "psst"')
        cat.expect("<To Ann> psst")

        browser.switch_to.window(ann)
        until(browser, lambda d: "hello from Bob" in text_of(d, "messages"))
        # The direct message waits in its own conversation, counted as unread.
        until(browser, lambda d: "Cat 1" in text_of(d, "conversations"))
        open_conversation(browser, "Cat")
        until(browser, lambda d: "Cat: psst" in text_of(d, "messages"))
        type_message(browser, "hi Cat")
        cat.read_until(lambda line: line == '<Message from Ann: "hi Cat">')
        until(browser, lambda d: "you: hi Cat ✓ delivered" in text_of(d, "messages"))
        browser.switch_to.window(bob)
        until(browser, lambda d: "Ann" in text_of(d, "people"))


def test_a_hostile_message_is_shown_as_text_and_runs_nothing(browser: webdriver.Chrome) -> None:
    with running_server("asyncio", web_port=0) as server, LineClient(server.port) as mallory:
        log_in(browser, page_of(server), "Ann")
        until(browser, logged_in)
        mallory.send("Mallory")
        mallory.expect("<User Mallory is online.>")
        mallory.send('broadcast "<img src=x onerror=\\"window.pwned=1\\"> '
                     '<script>window.pwned=2</script> \\x1b[2J \\u202eevil\\u202c"')
        until(browser, lambda d: "evil" in text_of(d, "messages"))
        shown = text_of(browser, "messages")
        assert '<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script>' in shown
        assert "\\x1b[2J <U+202E>evil<U+202C>" in shown
        assert "\u202e" not in shown and "\x1b" not in shown
        assert browser.find_elements(By.CSS_SELECTOR, "#messages img, #messages script") == []
        assert browser.execute_script("return window.pwned") is None


@pytest.mark.slow
def test_a_message_to_someone_who_left_says_it_was_not_delivered(
        browser: webdriver.Chrome) -> None:
    with running_server("select", web_port=0) as server:
        log_in(browser, page_of(server), "Ann")
        until(browser, logged_in)
        with LineClient(server.port) as bob:
            bob.send("Bob")
            bob.expect("<User Bob is online.>")
            bob.send('chat Ann "back in a minute"')
            bob.expect("<To Ann> back in a minute")
        until(browser, lambda d: "Bob is offline" in text_of(d, "messages"))
        open_conversation(browser, "Bob")
        type_message(browser, "are you there?")
        until(browser, lambda d: "✗ not delivered: Bob is offline" in text_of(d, "messages"))


@pytest.mark.slow
def test_a_registered_name_asks_for_its_password(browser: webdriver.Chrome,
                                                 tmp_path: Path) -> None:
    accounts = AccountsConfig(path=str(tmp_path / "accounts.db"),
                              password_hash="scrypt:ln=4,r=8,p=1", backoff_first=0.0,
                              backoff_max=0.0)
    with running_server("threads", accounts=accounts, web_port=0) as server:
        with LineClient(server.port) as owner:
            owner.send("Ann")
            owner.expect("<User Ann is online.>")
            owner.send('register "correct horse 42"')
            owner.expect("<Username Ann is now registered.>")
        log_in(browser, page_of(server), "ann")
        until(browser, lambda d: d.find_element(By.ID, "password").is_displayed())
        assert "Password for ann" in text_of(browser, "login")
        browser.find_element(By.ID, "password").send_keys("wrong one\n")
        until(browser, lambda d: "Wrong password for Ann." in text_of(d, "login-error"))
        browser.find_element(By.ID, "password").send_keys("correct horse 42\n")
        until(browser, logged_in)
        assert "Connected as Ann" in text_of(browser, "status")


@pytest.mark.slow
def test_the_page_reconnects_after_a_server_restart_keeping_the_draft(
        browser: webdriver.Chrome) -> None:
    with running_server("asyncio", web_port=0) as first:
        log_in(browser, page_of(first), "Ann")
        until(browser, logged_in)
        browser.find_element(By.ID, "draft").send_keys("half-written thought")
        web_port = first.web_port
    # Stopped: the page got the shutdown notice and a close frame.
    until(browser, lambda d: "reconnecting" in text_of(d, "status"))
    # Back on the same web port (another backend, as after an upgrade).
    with running_server("select", web_port=web_port) as second, \
            LineClient(second.port) as bob:
        bob.send("Bob")
        bob.expect("<User Bob is online.>")
        bob.read_until(lambda line: line == "<User Ann is online.>")
        until(browser, lambda d: "Connected as Ann" in text_of(d, "status"))
        draft = browser.find_element(By.ID, "draft").get_attribute("value")
        assert draft == "half-written thought"
        type_message(browser, "")  # Enter: the kept draft goes out now
        bob.read_until(lambda line: line == '<Broadcast from Ann: "half-written thought">')


@pytest.mark.slow
def test_a_taken_name_is_said_and_the_page_works_by_keyboard_alone(
        browser: webdriver.Chrome) -> None:
    with running_server("select", web_port=0) as server, LineClient(server.port) as bob:
        bob.send("Bob")
        bob.expect("<User Bob is online.>")
        browser.get(page_of(server))
        browser.switch_to.active_element.send_keys("bob", Keys.ENTER)  # the name box has focus
        until(browser, lambda d: "Bob is already taken" in text_of(d, "login-error"))
        assert text_of(browser, "status") == "Connected, not logged in"
        name = browser.switch_to.active_element
        name.send_keys(Keys.CONTROL, "a")
        name.send_keys("Ann", Keys.ENTER)  # on the same connection
        until(browser, logged_in)
        bob.expect("<User Ann is online.>")
        # From the message box, back through the page to "Message Bob".
        for _ in range(10):
            browser.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
            if browser.switch_to.active_element.get_attribute("aria-label") == "Message Bob":
                break
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        browser.switch_to.active_element.send_keys("by keyboard", Keys.ENTER)
        bob.expect('<Message from Ann: "by keyboard">')
