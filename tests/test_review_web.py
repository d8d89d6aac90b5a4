"""The review web application over a synthetic scoring output (no Ray, no browser)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.config import ScoreConfig
from wbc_ray.review import synthetic
from wbc_ray.review.app import create_app
from wbc_ray.review.run import open_station
from wbc_ray.review.source import ScoredOutputError, ScoredRun
from wbc_ray.review.station import ReviewStation

RANGES = ScoreConfig().reference_ranges
NEU, LYM = "NEUTROPHIL", "LYMPHOCYTE"


def machine_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for t in ("cells", "samples", "runs") for p in (root / t).rglob("*") if p.is_file()}


@pytest.fixture()
def scored(tmp_path):
    """3 samples x 30 cells over 12 images; one image deleted, one overwritten with junk."""
    images = synthetic.write_images(str(tmp_path / "images"), 12)
    root = tmp_path / "out"
    synthetic.write_output(str(root), images, samples=3, cells_per_sample=30,
                           classes=PAPER_CLASSES, ranges=RANGES, min_cells=20)
    os.remove(images[0])
    Path(images[1]).write_bytes(b"not an image")
    (tmp_path / "images" / "evil.png").symlink_to("/etc/passwd")
    return root


@pytest.fixture()
def client(scored):
    station = ReviewStation(str(scored))
    c = TestClient(create_app(station), base_url="http://127.0.0.1")
    c.get("/")  # session cookie
    return c


def token(client: TestClient, path: str = "/") -> str:
    html = client.get(path).text
    return re.search(r'name="review-token" content="([0-9a-f]+)"', html).group(1)


def post(client, url, body, tok=None):
    return client.post(url, json=body, headers={"X-Review-Token": tok or token(client)})


def act(client, sid, cid, action="label", label=None, tok=None):
    return post(client, "/api/act", {"sample_id": sid, "cell_id": cid, "action": action,
                                     "label": label, "reviewer": "Ann Tech"}, tok)


def test_worklist_lists_samples_with_intervals_flags_and_status(client):
    html = client.get("/").text
    for sid in ("S00000", "S00001", "S00002"):
        assert f">{sid}</a>" in html
    assert "unreviewed" in html and "Pre-classification agreement" in html
    assert re.search(r"\d+\.\d <small>\[\d+\.\d&ndash;\d+\.\d\]</small>", html)
    rows = client.get("/", params={"sort": "sample"}).text
    assert rows.index(">S00000<") < rows.index(">S00001<") < rows.index(">S00002<")
    none = client.get("/", params={"status": "signed"}).text
    assert "No samples match." in none
    assert "sort must be one of" in client.get("/", params={"sort": "bogus"}).text


def test_sample_view_galleries_review_first(client, scored):
    html = client.get("/sample", params={"s": "S00000"}).text
    assert html.index('data-gallery="review"') < html.index('data-gallery="EOSINOPHIL"')
    assert html.count('<figure class="cell') == 30
    assert client.get("/sample", params={"s": "nope"}).status_code == 404


def test_only_scored_images_are_served(client, scored):
    ok = client.get("/thumb", params={"s": "S00000", "c": "c0003"})
    assert ok.status_code == 200 and ok.headers["x-image-status"] == "ok"
    assert ok.content[:2] == b"\xff\xd8"
    for s, c in [("S00000", "../../../../etc/passwd"), ("/etc/passwd", "c0001"),
                 ("..", ".."), ("S00000", str(scored.parent / "images" / "evil.png")),
                 ("S00000", "%2e%2e%2f%2e%2e%2fetc%2fpasswd")]:
        assert client.get("/thumb", params={"s": s, "c": c}).status_code == 404
    for path in ("/static/..%2f..%2fstate.py", "/static/%2e%2e/app.py", "/static/../app.py",
                 "/etc/passwd", "/static/review.css/../../app.py", "/static/__init__.py"):
        r = client.get(path)
        assert r.status_code == 404 and b"import" not in r.content, path
    assert client.get("/static/review.js").status_code == 200


def test_missing_or_unreadable_image_is_a_placeholder_and_stays_reviewable(client):
    for cid in ("c0000", "c0001"):  # S00000's first two cells use the removed / junk images
        r = client.get("/thumb", params={"s": "S00000", "c": cid})
        assert r.status_code == 200 and r.headers["x-image-status"] == "placeholder"
        assert act(client, "S00000", cid, label=NEU).status_code == 200


def test_state_changes_need_post_and_the_session_token(client):
    body = {"sample_id": "S00000", "cell_id": "c0002", "action": "label", "label": NEU,
            "reviewer": "Ann"}
    assert client.post("/api/act", json=body).status_code == 403
    assert client.post("/api/act", json=body, headers={"X-Review-Token": "0" * 64}) \
        .status_code == 403
    other = TestClient(client.app, base_url="http://127.0.0.1")
    assert other.post("/api/act", json=body, headers={"X-Review-Token": token(client)}) \
        .status_code == 403  # another browser's token
    assert client.get("/api/act").status_code == 405
    assert post(client, "/api/act", body).status_code == 200


def test_foreign_host_header_is_refused(client):
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400


def test_labels_outside_the_classes_are_refused_with_a_message(client):
    r = act(client, "S00000", "c0002", label="BASOPHIL")
    assert r.status_code == 400
    assert "not one of the checkpoint's classes" in r.json()["error"]
    assert act(client, "S00000", "no-such-cell", label=NEU).status_code == 404


def test_review_sign_and_export(client, scored, tmp_path):
    before = machine_files(scored)
    tok = token(client, "/sample?s=S00001")
    live = client.get("/api/sample", params={"s": "S00001"}).json()
    assert live["status"] == "unreviewed" and live["unresolved"] > 0
    r = post(client, "/api/sign", {"sample_id": "S00001", "reviewer": "Ann"}, tok)
    assert r.status_code == 400 and "not confirmed" in r.json()["error"]

    cells = pd.read_parquet(scored / "cells")
    mine = cells[cells.sample_id == "S00001"].sort_values("cell_id")
    flagged = list(mine.loc[mine.needs_review, "cell_id"])
    first, *rest = flagged
    new = LYM if mine.set_index("cell_id").loc[first, "label"] != LYM else NEU
    assert act(client, "S00001", first, label=new, tok=tok).json()["status"] == "in review"
    act(client, "S00001", rest[0], "exclude", tok=tok)
    for cid in rest[1:]:
        live = act(client, "S00001", cid, label=mine.set_index("cell_id").loc[cid, "label"],
                   tok=tok).json()
    assert live["unresolved"] == 0 and live["refusal"] is None and live["excluded"] == 1
    stale = post(client, "/api/sign", {"sample_id": "S00001", "reviewer": "Ann",
                                       "seen_events": 1}, tok)
    assert stale.status_code == 409 and "reload" in stale.json()["error"]
    signed = post(client, "/api/sign", {"sample_id": "S00001", "reviewer": "Ann",
                                        "seen_events": live["events"]}, tok)
    assert signed.status_code == 200 and signed.json()["status"] == "signed"
    assert act(client, "S00001", first, label=NEU, tok=tok).status_code == 409

    row = pd.read_parquet(scored / "signed").iloc[0]
    assert (row["cells_before"], row["cells_after"], row["cells_excluded"]) == (30, 29, 1)
    assert row["reviewer"] == "Ann" and row[f"{new.lower()}_count"] == \
        row[f"{new.lower()}_count_before"] + 1 - int(
            mine.set_index("cell_id").loc[rest[0], "label"] == new)
    corrections = pd.read_parquet(scored / "corrections")
    assert len(corrections) == len(flagged) and corrections["event_id"].is_unique
    assert machine_files(scored) == before  # nothing the scorer wrote changed

    summary = json.loads((scored / "review" / "summary.json").read_text())
    assert summary["samples"]["signed"] == 1
    assert summary["agreement"]["overall"]["reclassified"] == 1
    assert "signed" in client.get("/", params={"status": "signed"}).text

    out = str(tmp_path / "manifest.parquet")
    got = open_station(str(scored)).export(out)
    m = pd.read_parquet(out)
    assert got["rows"] == len(m) == 29 and set(m["group"]) == {"S00001"}
    assert m.set_index("cell_id").loc[first, "label"] == new

    from wbc_ray.data.sources import list_inputs

    listing = list_inputs(out, PAPER_CLASSES)  # what `wbc-ray train --data` reads
    assert len(listing.records) == 29 and listing.records["label"].notna().all()
    assert set(listing.records["group"]) == {"S00001"}


def test_cli_export(scored, tmp_path):
    from wbc_ray.cli import app

    out = tmp_path / "m.csv"
    r = CliRunner().invoke(app, ["review", "export", "--scored", str(scored),
                                 "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["rows"] == 0 and out.exists()
    r = CliRunner().invoke(app, ["review", "--scored", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no scoring output" in r.output


def test_incompatible_or_missing_output_fails_at_start(scored, tmp_path):
    with pytest.raises(ScoredOutputError, match="no scoring output"):
        ScoredRun(str(tmp_path / "nothing"))
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    with pytest.raises(ScoredOutputError, match="holds no Parquet files"):
        ScoredRun(str(tmp_path / "empty"))
    old = tmp_path / "old"
    for p in (scored / "samples").rglob("*.parquet"):
        dest = old / p.relative_to(scored)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    for p in (scored / "cells").rglob("*.parquet"):
        df = pd.read_parquet(p).drop(columns=["needs_review", "confidence"])
        dest = old / p.relative_to(scored)
        dest.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(dest)
    with pytest.raises(ScoredOutputError, match="incompatible wbc-ray version"):
        ScoredRun(str(old))


def test_worklists_are_paginated(client, monkeypatch):
    from wbc_ray.review import station

    monkeypatch.setattr(station, "PAGE_SIZE", 2)
    html = client.get("/", params={"sort": "sample", "page_no": 2}).text
    assert "page 2 of 2 (3 samples)" in html and ">S00002<" in html and ">S00000<" not in html
    assert "page 1 of 2" in client.get("/", params={"page_no": 0}).text


def test_sample_cells_are_paginated(client, monkeypatch):
    from wbc_ray.review import app

    monkeypatch.setattr(app, "CELLS_PER_PAGE", 12)
    pages = [client.get("/sample", params={"s": "S00000", "page_no": n}).text for n in (1, 2, 3)]
    shown = [re.findall(r'data-cell="(c\d+)"', html) for html in pages]
    assert [len(s) for s in shown] == [12, 12, 6]
    assert len({c for s in shown for c in s}) == 30 and "cells page 3 of 3" in pages[2]
