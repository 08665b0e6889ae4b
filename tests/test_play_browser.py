"""The playground in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by Selenium through /usr/bin/chromedriver: nothing is downloaded at test time).

Set PLAYGROUND_SCREENSHOT=path to keep the screenshot (docs/img/playground.png is one).
"""

import os
import shutil
import threading
from pathlib import Path

import pytest
from play_support import tiny_ladder

from stagegpt.play.catalog import load_served
from stagegpt.play.server import bind, create_app
from stagegpt.play.worker import ModelWorker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no Chromium here: `apt-get install -y chromium chromium-driver` to run the "
           "real-browser test of the playground")
TOKENS = 24


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """The playground of a tiny two-stage ladder, served by uvicorn on a free port."""
    import uvicorn

    worker = ModelWorker(capacity=8)
    sock = bind(0)
    app = create_app(load_served(ladder=tiny_ladder(tmp_path_factory)), worker)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(timeout=10)
    worker.stop()
    sock.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,1500", "--disable-gpu"):
        options.add_argument(flag)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch a thing
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def wait_for(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 60, poll_frequency=0.05).until(lambda d: condition(d), message)


def heatmap(driver, drawn: str) -> str:
    """The heatmap's pixels (a data URL), once it shows stage/layer/head `drawn`."""
    wait_for(driver, lambda d: d.find_element("id", "heatmap").get_attribute("data-drawn")
             == drawn, f"the heatmap of {drawn}")
    return driver.execute_script("return document.getElementById('heatmap').toDataURL()")


def choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def test_generate_inspect_a_token_switch_heads_and_stages(url, browser, tmp_path):
    browser.get(url)
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#stages input")) == 2,
             "the stage switcher")
    served = browser.find_element("id", "served").text
    assert "stage 3" in served and "stage 5" in served and "val loss" in served

    prompt = browser.find_element("id", "prompt")
    prompt.send_keys("To be, or not")
    tokens = browser.find_element("id", "max-new-tokens")
    tokens.clear()
    tokens.send_keys(str(TOKENS))
    browser.find_element("id", "generate").click()

    def chips(stage):
        return browser.find_elements("css selector", f'.column[data-stage="{stage}"] .chip.new')

    wait_for(browser, lambda d: len(chips(3)) == TOKENS and len(chips(5)) == TOKENS,
             "the token chips of both stages")
    wait_for(browser, lambda d: d.find_element("id", "status").text.startswith("done"),
             "the end of generation")
    columns = browser.find_elements("css selector", ".column h2")
    assert [c.text.split()[:2] for c in columns] == [["stage", "3"], ["stage", "5"]]
    assert all("val loss" in c.text for c in columns)

    chips(5)[4].click()  # a token's alternatives
    details = browser.find_element("id", "details")
    assert details.is_displayed() and "probability" in details.text
    alternatives = browser.find_elements("css selector", "#alternatives li")
    assert len(alternatives) == 5

    first = heatmap(browser, "5/0/0")
    choose(browser, "attn-head", "1")
    other_head = heatmap(browser, "5/0/1")
    choose(browser, "attn-layer", "1")
    other_layer = heatmap(browser, "5/1/1")
    assert len({first, other_head, other_layer}) == 3
    shot = Path(os.environ.get("PLAYGROUND_SCREENSHOT") or tmp_path / "playground.png")
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    choose(browser, "attn-stage", "3")  # stage 3: one layer with a single head
    assert heatmap(browser, "3/0/0") not in {first, other_head, other_layer}
    assert len(browser.find_elements("css selector", "#attn-head option")) == 1

    browser.find_element("css selector", '#stages input[value="3"]').click()  # stage 5 alone
    browser.find_element("id", "generate").click()
    wait_for(browser, lambda d: len(chips(5)) == TOKENS and not chips(3), "stage 5 alone")
    assert len(browser.find_elements("css selector", ".column")) == 1
    note = browser.find_element("id", "attn-note")  # stage 3's text is gone: so is its map
    wait_for(browser, lambda d: "stage 3 has no text on screen" in note.text, "the note")
    assert browser.find_element("id", "heatmap").get_attribute("data-drawn") is None


def test_generating_again_mid_stream_replaces_the_first_stream(url, browser):
    """A second Generate while the first still streams: the first stops, and the tokens the
    page keeps (whose attention it draws) are exactly the chips on screen."""
    browser.get(url)
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#stages input")) == 2,
             "the stage switcher")
    tokens = browser.find_element("id", "max-new-tokens")
    tokens.clear()
    tokens.send_keys("300")
    browser.find_element("id", "generate").click()
    browser.find_element("id", "generate").click()
    wait_for(browser, lambda d: d.find_element("id", "status").text.startswith("done"),
             "the end of generation")
    kept = browser.execute_script("""return [3, 5].map((s) => [texts[s].length,
        document.querySelectorAll(`.column[data-stage="${s}"] .chip`).length])""")
    assert kept[0][0] == kept[0][1] and kept[1][0] == kept[1][1], kept
    assert len(browser.find_elements("css selector", ".column")) == 2


def test_a_seed_past_2_to_the_53_is_sent_as_typed(url, browser, tmp_path_factory):
    """JavaScript numbers hold integers exactly only up to 2**53: the page sends the digits
    typed, so the largest seed samples what `generate` samples with it."""
    import torch

    from stagegpt.generation import generate

    seed = 2**64 - 1
    browser.get(url)
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#stages input")) == 2,
             "the stage switcher")
    browser.find_element("css selector", '#stages input[value="3"]').click()  # stage 5 alone
    for field, value in (("seed", seed), ("max-new-tokens", 12)):
        box = browser.find_element("id", field)
        box.clear()
        box.send_keys(str(value))
    browser.find_element("id", "generate").click()
    wait_for(browser, lambda d: d.find_element("id", "status").text.startswith("done"),
             "the end of generation")
    ids = browser.execute_script("return texts[5].map((t) => t.id)")
    model = load_served(ladder=tiny_ladder(tmp_path_factory))[5].model
    start = ids[:1]  # the empty prompt's start token
    assert ids == generate(model, torch.tensor([start]), 12, seed=seed)[0].tolist()
