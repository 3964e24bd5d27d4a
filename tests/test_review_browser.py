"""The review page in a real headless browser (Debian `chromium` + `chromium-driver`, driven by Selenium).

Skipped where the browser is not installed: `apt-get install chromium chromium-driver` and
`pip install selenium`. The screenshot lands in the test's tmp folder (or $MEMEGUARD_TEST_ARTIFACTS).
"""

import base64
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from consumer.devinfra.stack import free_port
from consumer.review.app import create_app
from consumer.review.ingest import ReviewIngest
from consumer.review.settings import ReviewSettings
from consumer.review.store import ReviewStore
from tests.kafka_helpers import produce_events, produce_raw, read_json_topic
from tests.memes import event, meme_bytes
from tests.test_review import HOSTILE, PASSWORDS, USERS, verdict_for

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian chromium + chromium-driver")]


@pytest.fixture
def serve():
    """Starts the review app under uvicorn on a free loopback port; returns its base URL."""
    import uvicorn

    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(s: ReviewSettings, store: ReviewStore) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(s, store), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "review server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def review_settings(stack, topics, **auth) -> ReviewSettings:
    return ReviewSettings(kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, input_topic=topics.input,
                          output_topic=topics.output, reviews_topic=f"reviews-{topics.group}",
                          review_group_id=f"review-{topics.group}", **(auth or {"review_users": USERS}))


def wait_for(condition, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def evil_page():
    """A page on another origin whose form posts to the review page on load (a CSRF attempt)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers: list[ThreadingHTTPServer] = []

    def make(target: str, host: str) -> str:
        html = (f'<form method="post" action="{target}"><input name="action" value="confirm"></form>'
                "<script>document.forms[0].submit()</script>").encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://{host}:{server.server_address[1]}/"

    yield make
    for server in servers:
        server.shutdown()


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_browser_signs_in_decides_by_click_undoes_and_publishes_who_decided(stack, topics, serve, browser, evil_page,
                                                                            tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    s = review_settings(stack, topics)
    store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    url = serve(s, store)
    img = meme_bytes(5)
    b64 = base64.b64encode(img).decode()
    hostile = event("br-hostile", text=HOSTILE, image_b64=b64)
    second = event("br-second", text="second meme", image_b64=b64)
    repost = event("br-repost", text="SECOND  meme", image_b64=b64)  # same content as br-second: no second card
    # The repost after the others are in: on another partition it could otherwise be read first and take the card.
    for batch in ([hostile, second], [repost]):
        produce_events(stack.bootstrap, topics.input, batch)
        produce_raw(stack.bootstrap, topics.output, [(e.post_id.encode(), verdict_for(e, "review", img)
                                                      .model_dump_json().encode()) for e in batch])
        ReviewIngest(s.kafka_bootstrap, s.review_group_id, s.input_topic, s.output_topic, store).drain()
    assert sorted(store.pending()) == ["br-hostile", "br-second"]

    # Not signed in: the sign-in form, then back to the meme asked for.
    browser.get(f"{url}/item?event_id=br-hostile")
    assert browser.find_elements(By.ID, "item") == []
    browser.find_element(By.ID, "username").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys("wrong password")
    browser.find_element(By.ID, "sign-in").click()
    # The click returns before the answer's page has loaded (scrypt makes it slow on loaded cores): wait for it.
    wait_for(lambda: browser.find_elements(By.ID, "login-error"), browser.current_url)
    assert "Wrong user name or password" in browser.find_element(By.ID, "login-error").text
    browser.find_element(By.ID, "username").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys(PASSWORDS["alice"])
    browser.find_element(By.ID, "sign-in").click()
    wait_for(lambda: browser.current_url == f"{url}/item?event_id=br-hostile" and browser.find_elements(By.ID, "item"),
             browser.current_url)
    assert browser.find_element(By.ID, "moderator").text == "alice"

    assert browser.find_element(By.ID, "meme-text").text == HOSTILE  # shown as text, not markup
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (the hostile script would have raised an alert)
    scripts = browser.execute_script("return [...document.scripts].map(s => s.src)")
    assert scripts == [f"{url}/static/review.js"]
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert browser.execute_script("return document.querySelector('img.meme').naturalWidth") > 0
    shot = Path(os.environ.get("MEMEGUARD_TEST_ARTIFACTS", tmp_path)) / "review-page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000

    browser.find_element(By.ID, "confirm").click()  # a click publishes and moves on to the next meme
    wait_for(lambda: "br-second" in browser.current_url, browser.current_url)
    assert "1 repost" in browser.find_element(By.ID, "duplicates").text
    assert "confirm on post br-hostile" in browser.find_element(By.ID, "undo").text
    browser.find_element(By.ID, "undo").click()  # undo: a retraction, and the meme is back
    wait_for(lambda: browser.current_url.endswith("/item?event_id=br-hostile") and browser.find_elements(By.ID, "confirm"),
             browser.current_url)
    assert "br-hostile" in store.pending()
    browser.find_element(By.TAG_NAME, "body").send_keys("o")  # keyboard shortcut: overturn instead
    wait_for(lambda: "br-second" in browser.current_url, browser.current_url)
    browser.find_element(By.ID, "overturn").click()
    wait_for(lambda: not store.pending(), store.pending())

    decided = store.get("br-second").decision
    browser.find_element(By.TAG_NAME, "body").send_keys("u")  # keyboard shortcut: undo the last one, br-second
    wait_for(lambda: store.pending() == ["br-second"], store.pending())
    # Same site, another origin (another port): the cookies ride along, the server refuses (Sec-Fetch-Site, no token).
    browser.get(evil_page(f"{url}/decision?event_id=br-second", "127.0.0.1"))
    wait_for(lambda: "cross-site request refused" in browser.page_source, browser.current_url + browser.page_source[:300])
    # Another site: SameSite=Strict keeps the session cookie home, so the request is not even signed in.
    browser.get(evil_page(f"{url}/decision?event_id=br-second", "localhost"))
    wait_for(lambda: "sign in to review" in browser.page_source, browser.page_source[:300])
    assert store.pending() == ["br-second"]

    reviews = read_json_topic(stack.bootstrap, s.reviews_topic)
    assert {(m["moderator"], m["moderator_auth"]) for m in reviews} == {("alice", "password")}
    hostile_msgs = [m for m in reviews if m["event_id"] == "br-hostile"]  # one key, one partition: in order
    assert [(m["type"], m["action"]) for m in hostile_msgs] == [("review", "confirm"), ("retraction", "undo"),
                                                                ("review", "overturn")]
    assert hostile_msgs[1]["retracts"] == hostile_msgs[0]["review_id"]
    second_msgs = [m for m in reviews if m["event_id"] == "br-second"]
    assert [(m["type"], m["action"]) for m in second_msgs] == [("review", "overturn"), ("retraction", "undo")]
    assert second_msgs[0]["review_id"] == decided["review_id"] == second_msgs[1]["retracts"]
    assert second_msgs[0]["duplicates"] == [{"event_id": "br-repost", "post_id": "br-repost", "author_id": "auth"}]


def test_browser_dev_mode_says_it_has_no_authentication(stack, topics, serve, browser):
    from selenium.webdriver.common.by import By

    s = review_settings(stack, topics, review_dev_no_auth=True)
    store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    browser.get(serve(s, store))
    banner = browser.find_element(By.ID, "dev-banner")
    assert banner.is_displayed() and "no authentication" in banner.text.lower()
    assert browser.find_element(By.ID, "moderator").text == "dev-unauthenticated"
