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

from consumer.devinfra import free_port
from consumer.review.app import create_app
from consumer.review.ingest import ReviewIngest
from consumer.review.store import ReviewStore
from consumer.settings import ReviewSettings
from tests.kafka_helpers import produce_events, produce_raw, read_json_topic
from tests.memes import event, meme_bytes
from tests.test_review import HOSTILE, verdict_for

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian chromium + chromium-driver")]


@pytest.fixture
def served(stack, topics):
    import uvicorn

    s = ReviewSettings(kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, input_topic=topics.input,
                       output_topic=topics.output, reviews_topic=f"reviews-{topics.group}",
                       review_group_id=f"review-{topics.group}")
    store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(s, store), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "review server did not start"
        time.sleep(0.05)
    yield s, store, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


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


def test_browser_shows_the_queued_meme_keeps_hostile_text_inert_and_publishes_on_click(stack, topics, served,
                                                                                      browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    s, store, url = served
    img = meme_bytes(5)
    b64 = base64.b64encode(img).decode()
    hostile = event("br-hostile", text=HOSTILE, image_b64=b64)
    second = event("br-second", text="second meme", image_b64=b64)
    produce_events(stack.bootstrap, topics.input, [hostile, second])
    produce_raw(stack.bootstrap, topics.output, [(e.post_id.encode(), verdict_for(e, "review", img).model_dump_json()
                                                  .encode()) for e in (hostile, second)])
    ReviewIngest(s.kafka_bootstrap, s.review_group_id, s.input_topic, s.output_topic, store).drain()

    browser.get(f"{url}/item/br-hostile")
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
    deadline = time.monotonic() + 15
    while "br-second" not in browser.current_url:
        assert time.monotonic() < deadline, browser.current_url
        time.sleep(0.1)
    browser.find_element(By.TAG_NAME, "body").send_keys("o")  # keyboard shortcut: overturn
    deadline = time.monotonic() + 15
    while store.pending():
        assert time.monotonic() < deadline, store.pending()
        time.sleep(0.1)
    reviews = {m["event_id"]: m for m in read_json_topic(stack.bootstrap, s.reviews_topic)}
    assert reviews["br-hostile"]["action"] == "confirm" and reviews["br-second"]["action"] == "overturn"
