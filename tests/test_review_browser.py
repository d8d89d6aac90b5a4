"""End to end in a real headless browser: score real cells, review by keyboard, sign, export.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/install-browser.sh``, run by
``make venv``); skipped without them except under CI, where it must run. Screenshots of the
worklist, a sample view and a field view go to ``$WBC_TEST_ARTIFACTS`` (or the test's tmp).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import kaggle_images as spread_kaggle_images
from conftest import spread_paper_cnn

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.config import ScoreConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SIGNED = "S1"
pytestmark = pytest.mark.slow  # Ray start + scoring 26 real cells: ~1-2 min on 2 cores


def _need_browser():
    if CHROMIUM and DRIVER:
        return
    msg = "chromium/chromedriver not installed (run scripts/install-browser.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def checkpoint(kaggle, tmp_path_factory) -> str:
    return spread_paper_cnn(kaggle, str(tmp_path_factory.mktemp("ckpt") / "best"))


def kaggle_images(kaggle, n: int, offset: int = 0):
    return spread_kaggle_images(kaggle, n, offset, stride=41)


@pytest.fixture(scope="module")
def scored(kaggle, checkpoint, ray_session, tmp_path_factory) -> str:
    """Two samples of 12 real cells each plus one slide field with its two WBC boxes."""
    from wbc_ray.scoring.pipeline import score

    work = tmp_path_factory.mktemp("review")
    rows = []
    for i, src in enumerate(kaggle_images(kaggle, 24)):
        rows.append({"sample_id": f"S{i % 2 + 1}", "uri": str(src),
                     "xmin": np.nan, "ymin": np.nan, "xmax": np.nan, "ymax": np.nan})
    field = kaggle / "originals" / "JPEGImages" / "BloodImage_00010.jpg"
    import xml.etree.ElementTree as ET

    xml = ET.parse(kaggle / "originals" / "Annotations" / "BloodImage_00010.xml").getroot()
    for o in xml.iter("object"):
        if o.findtext("name") == "WBC":
            b = o.find("bndbox")
            rows.append({"sample_id": "F1", "uri": str(field),
                         **{k: float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")}})
    pd.DataFrame(rows).to_parquet(work / "cells.parquet")
    out = str(work / "out")
    cfg = ScoreConfig(checkpoint=checkpoint, input=str(work / "cells.parquet"), output=out,
                      run_date="2031-03-01", min_cells=10, review_threshold=0.7)
    summary = score(cfg, progress=False)
    assert summary["reconciliation"]["ok"] and summary["counts"]["cells_written"] == 26
    return out


@pytest.fixture(scope="module")
def server(scored):
    import socket

    import uvicorn

    from wbc_ray.review.app import create_app
    from wbc_ray.review.run import open_station

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(open_station(scored), host="127.0.0.1")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1100", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("WBC_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for(driver, predicate, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: predicate(d))


def machine_hashes(root: str) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for t in ("cells", "samples", "quarantine") for p in Path(root, t).rglob("*")
            if p.is_file()}


def test_review_by_keyboard_sign_and_export(scored, server, browser, artifacts, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = machine_hashes(scored)
    browser.get(server + "/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
    assert sorted(r.get_attribute("data-sample") for r in rows) == ["F1", "S1", "S2"]
    assert "unreviewed" in browser.find_element(By.ID, "worklist").text

    browser.find_element(By.ID, "reviewer").send_keys("Ann Tech")
    browser.find_element(By.XPATH, f"//a[@class='sample-link' and text()='{SIGNED}']").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "figure.cell"))
    figures = browser.find_elements(By.CSS_SELECTOR, "figure.cell")
    assert len(figures) == 12
    flagged = len(browser.find_elements(By.CSS_SELECTOR, "figure.cell.flagged"))
    wait_for(browser, lambda d: d.execute_script(  # every thumbnail decoded
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))

    figures[0].click()
    keys, expected = [], {}
    for k in range(max(2, flagged)):  # two reclassified by digit key, the rest confirmed
        fig = figures[k]
        machine = fig.get_attribute("data-machine")
        if k < 2:
            new = next(c for c in PAPER_CLASSES if c != machine)
            keys.append(str(PAPER_CLASSES.index(new) + 1))
            expected[fig.get_attribute("data-cell")] = new
        else:
            keys.append(Keys.ENTER)
    chain = ActionChains(browser)
    for key in keys:
        chain.send_keys(key)
    chain.perform()
    wait_for(browser, lambda d: d.find_element(By.ID, "unresolved").text == "0"
             and len(d.find_elements(By.CSS_SELECTOR, "figure.cell.reviewed")) == len(keys))
    changed = browser.find_elements(By.CSS_SELECTOR, "figure.cell.changed")
    assert {f.get_attribute("data-cell") for f in changed} == set(expected)
    counts = {r.get_attribute("data-class"): int(r.find_element(By.CLASS_NAME, "count").text)
              for r in browser.find_elements(By.CSS_SELECTOR, "#differential tbody tr")}
    assert sum(counts.values()) == 12
    sign = browser.find_element(By.ID, "sign")
    wait_for(browser, lambda d: sign.is_enabled())
    browser.save_screenshot(str(artifacts / "review-sample.png"))
    sign.click()
    wait_for(browser, lambda d: d.find_element(By.ID, "status").text == "signed")

    cells = pd.read_parquet(Path(scored, "cells"))
    mine = cells[cells.sample_id == SIGNED].set_index("cell_id")
    signed = pd.read_parquet(Path(scored, "signed"))
    assert len(signed) == 1
    row = signed.iloc[0]
    assert row["sample_id"] == SIGNED and row["reviewer"] == "Ann Tech"
    assert row["cells_before"] == row["cells_after"] == 12 and row["needs_review"] == 0
    assert row["cells_reclassified"] == 2 and row["cells_reviewed"] == len(keys)
    final = mine["label"].copy()
    for cid, new in expected.items():
        final[cid] = new
    for c in PAPER_CLASSES:
        assert row[f"{c.lower()}_count"] == int((final == c).sum()) == counts[c]
        assert row[f"{c.lower()}_count_before"] == int((mine["label"] == c).sum())
    corr = pd.read_parquet(Path(scored, "corrections"))
    assert len(corr) == len(keys) and corr["event_id"].is_unique
    relabels = corr[corr["label"] != corr["machine_label"]].set_index("cell_id")["label"]
    assert relabels.to_dict() == expected
    assert machine_hashes(scored) == before

    from wbc_ray.data.sources import list_inputs
    from wbc_ray.review.run import export

    manifest = str(tmp_path / "manifest.parquet")
    got = export(scored, manifest)
    m = pd.read_parquet(manifest)
    assert got["rows"] == len(m) == 12 and set(m["group"]) == {SIGNED}
    assert m.set_index("cell_id")["label"].to_dict() == final.to_dict()
    records = list_inputs(manifest, PAPER_CLASSES).records
    assert len(records) == 12 and set(records["group"]) == {SIGNED}

    browser.get(server + "/?status=signed")
    assert SIGNED in browser.find_element(By.ID, "worklist").text
    agreement = browser.find_element(By.ID, "agreement").text
    assert agreement.count("%") >= 2  # at least one class and the total have a figure
    browser.get(server + "/")
    browser.save_screenshot(str(artifacts / "review-worklist.png"))


def test_field_view_draws_the_boxes(server, browser, artifacts):
    from selenium.webdriver.common.by import By

    browser.get(server + "/sample?s=F1")
    links = browser.find_elements(By.CSS_SELECTOR, "a.field-link")
    assert len(links) == 2
    browser.get(links[0].get_attribute("href"))
    rects = browser.find_elements(By.CSS_SELECTOR, "svg.field rect")
    assert len(rects) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.field g.current")) == 1
    wait_for(browser, lambda d: d.execute_script(
        "return document.querySelector('svg.field image').getBBox().width > 0"))
    browser.save_screenshot(str(artifacts / "review-field.png"))
