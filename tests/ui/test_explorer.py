"""The credit explorer (GET /ui) in a real headless Chromium against a live keyed server on the
embedded model: it loads offline, renders a demo group for three methods, shows for a token the
numbers the API gives for the same request, and shows API errors as readable messages."""

from __future__ import annotations

import base64
import io
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from selenium.webdriver.common.action_chains import ActionChains

from server.app import create_app
from server.settings import Settings

METHODS = ("hsd", "antisd", "amrsd")
API_KEY = "ui-test-key"  # conftest.API_KEY
AUTH = {"authorization": f"Bearer {API_KEY}"}


def set_methods(driver, methods) -> None:
    for box in driver.find_elements("css selector", "#methods input"):
        if (box.get_attribute("value") in methods) != box.is_selected():
            box.click()


def compute(ui, driver, expect: str = "methods scored") -> None:
    driver.find_element("id", "run").click()
    ui.wait(driver, 120).until(
        lambda d: (
            expect in d.find_element("id", "status").text
            or d.find_element("id", "error").is_displayed()
        ),
        message="the page neither rendered nor showed an error",
    )


def shown_number(text: str) -> float:
    return float(text.replace("−", "-"))


@pytest.fixture(scope="module")
def demo_page(ui, chromium, ui_server):
    """The page after 'Load demo' and 'Compute credit' for hsd, antisd and amrsd."""
    ui.requested_urls(chromium)  # drop what earlier tests requested
    ui.open_page(chromium, ui_server)
    chromium.find_element("id", "demo").click()
    set_methods(chromium, METHODS)
    compute(ui, chromium)
    return chromium


# ---- the route -------------------------------------------------------------------------------


def test_ui_is_off_without_the_setting():
    off = TestClient(create_app(Settings(ui=False)))
    assert off.get("/ui").status_code == 404
    assert off.get("/ui/main.js").status_code == 404
    on = TestClient(create_app(Settings(ui=True)))
    page = on.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]


def test_ui_needs_a_key_when_keys_are_set(ui_server):
    url = ui_server.url
    missing = httpx.get(url + "/ui")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Basic")
    assert missing.json()["error"]["type"] == "unauthorized"
    assert httpx.get(url + "/ui/main.js").status_code == 401
    assert httpx.get(url + "/ui", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url + "/ui", auth=("anyone", "wrong")).status_code == 401
    assert httpx.get(url + "/ui", headers=AUTH).status_code == 200
    assert httpx.get(url + "/ui", auth=("anyone", API_KEY)).status_code == 200
    script = httpx.get(url + "/ui/api.js", headers=AUTH)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(url + "/ui/server.py", headers=AUTH).status_code == 404
    assert httpx.get(url + "/ui/..%2Fapp.py", headers=AUTH).status_code == 404


# ---- the page --------------------------------------------------------------------------------


def test_page_loads_offline_and_renders_three_methods(ui, demo_page, ui_server):
    driver = demo_page
    assert driver.find_element("id", "status").text.startswith("3 of 3 methods scored")
    assert not driver.find_element("id", "error").is_displayed()
    state = driver.execute_script("return explorer.state()")
    rollouts = state["group"]["rollouts"]
    assert len(rollouts) == 5
    assert [r["reward"] for r in rollouts] == [1.0, 0.0, 0.0, 1.0, 0.0]  # via POST /get_reward
    for i, rollout in enumerate(rollouts):
        # The labels (one /v1/tokenize per prefix) spell the rollout's text, one per token.
        assert "".join(state["labels"][i]) == rollout["text"]
        for m in METHODS:
            chips = driver.find_elements(
                "css selector", f'.tok[data-method="{m}"][data-rollout="{i}"]'
            )
            assert len(chips) == len(rollout["response_ids"])
    stats = {
        e.get_attribute("data-method"): e.text
        for e in driver.find_elements("css selector", ".stats")
    }
    assert set(stats) == set(METHODS)
    assert "AntiSD gate" in stats["antisd"]
    assert "masked rollouts 0" in stats["hsd"]
    # Teacher context per rollout: HSD's peer, AMR-SD's written hint or critique.
    hsd_cell = driver.find_element("css selector", '.cell[data-method="hsd"][data-rollout="1"]')
    assert "peer #" in hsd_cell.text
    amrsd_cell = driver.find_element("css selector", '.cell[data-method="amrsd"][data-rollout="1"]')
    assert "<critique>" in amrsd_cell.text
    # Divergence: rollout 1 (85-19=76) departs from a correct peer at the 7 of 76.
    marked = driver.find_elements("css selector", '.tok.diverge[data-rollout="1"]')
    assert len(marked) == len(METHODS) and {c.text for c in marked} == {"7"}
    assert "departs from peer" in driver.find_element("css selector", ".rollout-head.failed").text
    # Only this server was asked for anything.
    urls = ui.requested_urls(driver)
    paths = {urlsplit(u).path for u in urls if u.startswith("http")}
    assert {"/ui", "/ui/api.js", "/v1/tokenize", "/get_reward", "/v1/advantages"} <= paths
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss"):
            assert parts.hostname == "127.0.0.1", url
        else:  # the browser's own resources (chrome://), never the network
            assert parts.scheme in ("data", "blob", "chrome", "about"), url


def test_colour_toggle_switches_to_the_raw_signal(demo_page):
    driver = demo_page

    def colours():
        return driver.execute_script(
            "return [...document.querySelectorAll('.tok')]"
            ".map((c) => getComputedStyle(c).backgroundColor)"
        )

    by_advantage = colours()
    driver.find_element("css selector", "input[name=colour][value=signal]").click()
    by_signal = colours()
    driver.find_element("css selector", "input[name=colour][value=advantage]").click()
    assert len(by_signal) == len(by_advantage) > 0
    # HSD's Â is u_t here (mix 0); AntiSD's and AMR-SD's are not.
    changed = sum(a != s for a, s in zip(by_advantage, by_signal))
    assert changed > len(by_advantage) // 3
    assert colours() == by_advantage


def test_numbers_shown_for_a_token_equal_the_api(ui, demo_page, ui_server):
    driver = demo_page
    state = driver.execute_script("return explorer.state()")
    rollouts = state["group"]["rollouts"]
    # The same request, built here from the public API alone.
    for r in rollouts:
        ids = httpx.post(ui_server.url + "/v1/tokenize", json={"text": r["text"]}, headers=AUTH)
        assert r["response_ids"] == ids.json()["ids"]
    group = {
        "problem": "What is 37+48-19?",
        "reference_answer": "66",
        "reference_solution": "37+48=85. 85-19=66. \\boxed{66}",
        "rollouts": [
            {"text": r["text"], "response_ids": r["response_ids"], "reward": r["reward"]}
            for r in rollouts
        ],
    }
    for m in METHODS:
        body = {"method": m, "seed": 0, "return_details": True, "groups": [group]}
        assert state["requests"][m] == body  # what the page sent (its JSON export)
        api = httpx.post(ui_server.url + "/v1/advantages", json=body, headers=AUTH, timeout=120)
        assert api.status_code == 200, api.text
        for i, t in ((1, 16), (2, 6), (0, 3)):
            chip = driver.find_element(
                "css selector", f'.tok[data-method="{m}"][data-rollout="{i}"][data-t="{t}"]'
            )
            ActionChains(driver).move_to_element(chip).perform()
            tip = driver.find_element("id", "tooltip")

            def field(name, tip=tip):
                return tip.find_element("css selector", f'[data-field="{name}"]').text

            def shows_this_chip(d, m=m, i=i, t=t, tip=tip, field=field):
                return tip.is_displayed() and (
                    field("method") == m and field("token").endswith(f"rollout #{i} · t {t}")
                )

            ui.wait(driver, 5).until(shows_this_chip, message=f"no tooltip for {m} #{i} t {t}")

            want = api.json()["groups"][0]["rollouts"][i]
            pairs = {
                "advantage": want["advantages"][t],
                "student": want["details"]["student_logprobs"][t],
                "teacher": want["details"]["teacher_logprobs"][t],
                "signal": want["details"]["signal"][t],
            }
            for name, value in pairs.items():
                # Five significant digits on the page; batching may move the last float32 bits.
                assert shown_number(field(name)) == pytest.approx(value, rel=1e-4, abs=2e-5), (
                    m,
                    i,
                    t,
                    name,
                )
            assert field("mask") == (
                "0 (rollout masked: no teacher context)" if want["details"]["masked"] else "1"
            )


def test_png_export_draws_the_heatmaps(demo_page):
    from matplotlib.image import imread

    data_url = demo_page.execute_script(
        "return exporter.renderCanvas(explorer.state()).toDataURL('image/png')"
    )
    png = base64.b64decode(data_url.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(io.BytesIO(png))[..., :3]  # (H, W, 3) in [0, 1]
    assert pixels.shape[0] > 300 and pixels.shape[1] > 3 * 380
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    blue = (b > 0.9) & (r < 0.5)  # positive credit
    red = (r > 0.9) & (b < 0.5) & (g < 0.6)  # negative credit
    assert blue.sum() > 500 and red.sum() > 500
    snapshot = demo_page.execute_script("return exporter.snapshot(explorer.state())")
    assert set(snapshot["responses"]) == set(METHODS) == set(snapshot["requests"])


def test_api_errors_are_shown_as_readable_messages(ui, demo_page, ui_server):
    driver = demo_page
    box = driver.find_element("id", "rollouts")
    box.clear()
    box.send_keys('[{"response_ids": [20, 21], "reward": 1, "student_logprobs": [-0.5]}]')
    set_methods(driver, ["hsd"])
    compute(ui, driver)
    error = driver.find_element("id", "error")
    assert error.is_displayed()
    assert "POST /v1/advantages → 422" in error.text
    assert "groups[0].rollouts[0].student_logprobs" in error.text
    assert "has 1 entries but response_ids has 2" in error.text

    box.clear()
    box.send_keys("[{not json")
    compute(ui, driver)
    assert "Rollouts: not valid JSON" in error.text

    driver.find_element("id", "demo").click()
    params = driver.find_element("id", "params")
    params.send_keys('{"hsd": {"mixx": 0.5}}')
    compute(ui, driver)
    assert "POST /v1/advantages → 422" in error.text and "mixx" in error.text
    params.clear()

    # Without a key the server's 401 is the message.
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    ui.wait(driver, 30).until(lambda d: d.find_element("id", "error").is_displayed())
    assert "GET /v1/model → 401 unauthorized: missing" in driver.find_element("id", "error").text
    ui.open_page(driver, ui_server)


def test_sample_button_fills_rollouts(ui, demo_page, ui_server):
    """One click samples rollouts from the served model through POST /v1/completions."""
    driver = demo_page
    driver.find_element("id", "demo").click()
    driver.find_element("id", "sample-n").clear()
    driver.find_element("id", "sample-n").send_keys("3")
    driver.find_element("id", "rollouts").clear()
    driver.find_element("id", "sample").click()
    ui.wait(driver, 120).until(
        lambda d: (
            "sampled" in d.find_element("id", "status").text
            or d.find_element("id", "error").is_displayed()
        )
    )
    assert not driver.find_element("id", "error").is_displayed(), driver.find_element(
        "id", "error"
    ).text
    sampled = driver.execute_script("return JSON.parse(document.getElementById('rollouts').value)")
    assert len(sampled) == 3 and all(r["text"] for r in sampled)
    set_methods(driver, ["grpo"])
    compute(ui, driver)
    assert driver.find_element("id", "status").text.startswith("1 of 1 methods scored · 3")
