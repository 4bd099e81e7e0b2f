"""The bank's web page in a real browser: Debian's headless Chromium (`chromium`) driven through
its `chromedriver` by selenium, against the real server (`python -m service`, uvicorn on
127.0.0.1) serving the shipped digits weights, with API keys on.

Nothing is downloaded at test time: selenium is given the system browser and driver, so its
Selenium Manager never runs. Without them (scripts/system-deps.sh installs both) the test fails:
it is never skipped.

It writes 16 sklearn test digits, opens /ui, gives the read-only key, and checks what a person
sees: 16 slot images whose pixels are the reconstructions of GET /slots/{i} (grey levels, within
1), a pasted query whose first hit is the slot of that digit, a drawn query ranked as POST /read
ranks it, the next eviction the server plans, a delete refused with the server's 403, and, with
the full key, a delete that frees the slot and a write from elsewhere that the page shows
without a reload. /docs and /redoc render from the app's own files. No request of any page goes
to another host. Screenshots go to $MT_SCREENSHOTS when set (the committed docs/ui*.png come
from `MT_SCREENSHOTS=docs pytest tests/test_browser.py`), else to the test's tmp folder.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from model.data import digits
from service.process import ROOT, ServerProcess, free_port

CHROMIUM = os.environ.get("MT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MT_CHROMEDRIVER", "/usr/bin/chromedriver")
WEIGHTS = ROOT / "weights" / "digits-m16.safetensors"
FULL_KEY, READ_KEY = "ui-full-key-0123456789", "ui-read-key-0123456789"
N = 16  # digits written; also the bank's capacity, so the next write evicts
WAIT_S = 20


def grey(v: float) -> int:
    """app.js's grey(): Math.round(clamp(v, 0, 1) * 255) (Math.round: half up)."""
    return math.floor(min(1.0, max(0.0, v)) * 255 + 0.5)


def find_binary(path: str, package: str) -> str:
    found = shutil.which(path) or (path if Path(path).is_file() else None)
    assert found, (
        f"{path} not found: install Debian's {package} (bash scripts/system-deps.sh); "
        "this test needs the system browser and never downloads one"
    )
    return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "MT_HOST": "127.0.0.1",
        "MT_PORT": str(port),
        "MT_WEIGHTS": str(WEIGHTS),
        "MT_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
        "MT_CAPACITY": str(N),
        "MT_TORCH_THREADS": "1",
        "MT_WAL_FSYNC": "off",
        "MT_API_KEY": FULL_KEY,
        "MT_READ_API_KEY": READ_KEY,
        "PYTHONPATH": str(ROOT),
    }
    proc = ServerProcess(env, tmp_path / "server.log").start()
    try:
        proc.wait_ready(60)
        yield proc.base
    finally:
        proc.stop(20)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = find_binary(CHROMIUM, "chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1000",
        "--force-device-scale-factor=1",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=find_binary(CHROMEDRIVER, "chromium-driver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("MT_SCREENSHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def wait(driver: WebDriver, what: str, condition: Any) -> Any:
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        lambda d: condition(d), message=f"waiting for {what}"
    )


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def canvas_pixels(driver: WebDriver, selector: str) -> dict[str, Any]:
    """Every canvas matching selector: its data-slot and RGBA bytes (getImageData)."""
    return dict(
        driver.execute_script(
            """
            const out = {};
            for (const c of document.querySelectorAll(arguments[0])) {
              const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
              out[c.dataset.slot] = {w: c.width, h: c.height, rgba: Array.from(data)};
            }
            return out;
            """,
            selector,
        )
    )


def assert_drawn(pixels: dict[str, Any], reconstruction: list[float]) -> None:
    """The canvas is the 8x8 reconstruction as grey levels (R = G = B, opaque), within 1."""
    assert (pixels["w"], pixels["h"]) == (8, 8)
    rgba = pixels["rgba"]
    drawn = rgba[0::4]
    assert rgba[1::4] == drawn and rgba[2::4] == drawn and set(rgba[3::4]) == {255}
    want = [grey(v) for v in reconstruction]
    worst = max(abs(a - b) for a, b in zip(drawn, want, strict=True))
    assert worst <= 1, f"canvas differs from the reconstruction by {worst} grey levels"


def resources_elsewhere(driver: WebDriver, base: str) -> list[str]:
    """What the page loaded (performance entries) from anywhere but the app."""
    names = driver.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)];"
    )
    return [n for n in names if not n.startswith(base + "/")]


def severe_logs(driver: WebDriver) -> list[str]:
    """Console errors, less the 401 / 403 answers the test provokes on purpose."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE"
        and "status of 401" not in e["message"]
        and "status of 403" not in e["message"]
    ]


def give_key(driver: WebDriver, key: str) -> None:
    wait(driver, "the key prompt", lambda d: d.find_element(By.ID, "auth").is_displayed())
    driver.find_element(By.ID, "auth-key").send_keys(key)
    driver.find_element(By.ID, "auth-submit").click()


def wait_grid(driver: WebDriver, slots: set[int]) -> None:
    """Until the grid shows exactly these slots, each drawn (read in one script: the page
    replaces its cells while it refreshes)."""
    script = """return Array.from(document.querySelectorAll('#grid figure.slot'),
        f => [Number(f.dataset.slot), f.querySelector('canvas').hasAttribute('data-drawn')]);"""

    def drawn(d: WebDriver) -> bool:
        cells = d.execute_script(script)
        return all(ok for _, ok in cells) and sorted(s for s, _ in cells) == sorted(slots)

    wait(driver, f"{len(slots)} slot images", drawn)


def test_bank_page_in_chromium(server: str, browser: WebDriver, shots: Path) -> None:
    base, driver = server, browser
    items = digits().test[:N].astype(float).tolist()
    api = httpx.Client(base_url=base, headers={"X-API-Key": FULL_KEY}, timeout=10)
    with api:
        assert api.post("/write", json={"items": items, "mode": "each"}).json()["slots"] == list(
            range(N)
        )

        # the page asks for a key (none in the URL), then shows the 16 slots as images
        driver.get(base + "/ui")
        give_key(driver, READ_KEY)
        wait_grid(driver, set(range(N)))
        assert READ_KEY not in driver.current_url
        pixels = canvas_pixels(driver, "#grid canvas.recon")
        for slot in range(N):
            assert_drawn(pixels[str(slot)], api.get(f"/slots/{slot}").json()["reconstruction"])
        wait(driver, "the stats", lambda d: text(d, "stat-used") == f"{N} / {N}")

        # a pasted query: the digit written to slot 5 comes back first, rescored (MT_RESCORE
        # auto): its score is the cosine with its reconstruction, its code score ~1
        target = 5
        driver.find_element(By.ID, "numbers").send_keys(", ".join(map(str, items[target])))
        driver.find_element(By.ID, "search").click()
        wait(driver, "the hits", lambda d: d.find_elements(By.CSS_SELECTOR, "#hits li.hit"))
        hits = driver.find_elements(By.CSS_SELECTOR, "#hits li.hit")
        assert len(hits) == 5 and hits[0].get_attribute("data-slot") == str(target)
        shown = re.search(r"score (\d\.\d{4}) \(code (\d\.\d{4})\)", hits[0].text)
        assert shown is not None, hits[0].text
        score, code = float(shown[1]), float(shown[2])
        assert code >= 0.999 and 0.9 < score < code, hits[0].text

        # a drawn query: a stroke on the pad, ranked as POST /read ranks those values
        pad = driver.find_element(By.ID, "draw")
        ActionChains(driver).move_to_element_with_offset(
            pad, 0, -50
        ).click_and_hold().move_by_offset(0, 40).move_by_offset(0, 40).move_by_offset(
            0, 20
        ).release().perform()
        assert driver.find_element(By.ID, "source-draw").is_selected()
        drawn_query = driver.execute_script("return drawingValues();")
        assert len(drawn_query) == 64 and max(drawn_query) > 0.5
        driver.find_element(By.ID, "search").click()
        wait(
            driver,
            "the drawn query's hits",
            lambda d: d.find_element(By.ID, "hits").get_attribute("data-searches") == "2",
        )
        page_order = [
            int(li.get_attribute("data-slot"))
            for li in driver.find_elements(By.CSS_SELECTOR, "#hits li.hit")
        ]
        answer = api.post(
            "/read", json={"queries": [drawn_query], "top_k": 5, "reconstruct": False}
        ).json()
        assert page_order == [hit["slot"] for hit in answer["results"][0]]

        # the next eviction the page shows is the server's plan
        wait(driver, "the reads in the stats", lambda d: text(d, "stat-reads") == "3")
        plan = api.get("/evictions/next").json()
        assert plan["next"] is not None  # a full bank: the next write evicts
        victim = plan["next"]["slot"]
        wait(
            driver,
            "the next eviction",
            lambda d: f"evicts slot {victim} " in text(d, "next-eviction"),
        )
        marked = driver.find_elements(By.CSS_SELECTOR, "#grid figure.slot.next-evict")
        assert [m.get_attribute("data-slot") for m in marked] == [str(victim)]
        driver.save_screenshot(str(shots / "ui.png"))

        # the read-only key cannot delete: the page shows the server's 403
        doomed = 3
        driver.find_element(By.CSS_SELECTOR, f'#grid figure.slot[data-slot="{doomed}"]').click()
        wait(driver, "the slot detail", lambda d: text(d, "detail-slot") == str(doomed))
        driver.find_element(By.ID, "detail-delete").click()
        wait(driver, "the refusal", lambda d: "403" in text(d, "detail-status"))
        assert "read-only" in text(driver, "detail-status")
        driver.save_screenshot(str(shots / "ui-read-only.png"))
        assert api.get(f"/slots/{doomed}").status_code == 200
        assert api.get("/stats").json()["used"] == N

        # the full key can: the slot goes, and the page says the next write takes it
        driver.find_element(By.ID, "forget-key").click()
        give_key(driver, FULL_KEY)
        wait_grid(driver, set(range(N)))
        driver.find_element(By.CSS_SELECTOR, f'#grid figure.slot[data-slot="{doomed}"]').click()
        wait(driver, "the slot detail", lambda d: text(d, "detail-slot") == str(doomed))
        driver.find_element(By.ID, "detail-delete").click()
        wait_grid(driver, set(range(N)) - {doomed})
        assert api.get(f"/slots/{doomed}").status_code == 404
        wait(driver, "a free slot", lambda d: f"free slot {doomed}" in text(d, "next-eviction"))

        # a write from elsewhere shows up without a reload, drawn from its reconstruction
        assert api.post("/write", json={"items": [items[0]]}).json()["slots"] == [doomed]
        wait_grid(driver, set(range(N)))
        wait(driver, "the live stats", lambda d: text(d, "stat-writes") == str(N + 1))
        pixels = canvas_pixels(driver, f'#grid canvas.recon[data-slot="{doomed}"]')
        assert_drawn(pixels[str(doomed)], api.get(f"/slots/{doomed}").json()["reconstruction"])

        # ordering and paging: by count, the slot read most comes first; 4 per page
        driver.find_element(By.CSS_SELECTOR, '#order option[value="count"]').click()
        listing = api.get("/slots", params={"order": "count", "limit": 1}).json()
        wait(
            driver,
            "the count order",
            lambda d: (
                d.find_element(By.CSS_SELECTOR, "#grid figure.slot").get_attribute("data-slot")
                == str(listing["slots"][0]["slot"])
            ),
        )
        driver.find_element(By.CSS_SELECTOR, '#page-size option[value="24"]').click()
        wait(driver, "one page", lambda d: text(d, "page-info") == f"1–{N} of {N}")
        assert driver.find_element(By.ID, "next-page").get_attribute("disabled")

        assert resources_elsewhere(driver, base) == []
        assert severe_logs(driver) == []

    # the API docs render offline, from the app's own files
    driver.get(base + "/docs")
    wait(
        driver,
        "Swagger UI",
        lambda d: (
            "MemoryTransit"
            in "".join(e.text for e in d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))
        ),
    )
    wait(driver, "the operations", lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    assert resources_elsewhere(driver, base) == []
    driver.save_screenshot(str(shots / "docs-offline.png"))
    driver.get(base + "/redoc")
    wait(
        driver,
        "ReDoc",
        lambda d: "MemoryTransit" in "".join(e.text for e in d.find_elements(By.TAG_NAME, "h1")),
    )
    assert resources_elsewhere(driver, base) == []
    assert severe_logs(driver) == []
