"""Review state: corrections, sign-off rules, agreement, and the append-only store."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import uuid

import numpy as np
import pandas as pd
import pytest

from wbc_ray.classes import PAPER_CLASSES
from wbc_ray.review import state as st

EOS, LYM, MON, NEU = PAPER_CLASSES
RANGES = {NEU: (50.0, 70.0), LYM: (20.0, 40.0), MON: (3.0, 9.0), EOS: (2.0, 4.0)}


def cells(labels, flagged=()):
    n = len(labels)
    return pd.DataFrame({"sample_id": "S1", "cell_id": [f"c{i}" for i in range(n)],
                         "uri": [f"/img/{i}.png" for i in range(n)], "label": labels,
                         "confidence": np.linspace(0.3, 0.99, n).astype(np.float32),
                         "needs_review": [i in flagged for i in range(n)],
                         "xmin": np.nan, "ymin": np.nan, "xmax": np.nan, "ymax": np.nan})


def events(*rows):
    """rows: (cell index, action, label, seconds) -> an events frame."""
    t0 = pd.Timestamp("2031-01-01", tz="UTC")
    return pd.DataFrame([{"event_id": uuid.uuid4().hex, "sample_id": "S1", "cell_id": f"c{i}",
                          "action": a, "label": lab, "at": t0 + pd.Timedelta(seconds=s),
                          "reviewer": "ann"} for i, a, lab, s in rows])


def test_latest_event_per_cell_wins_and_untouched_cells_keep_the_machine_label():
    state = st.apply_events(cells([NEU, NEU, LYM, MON]),
                            events((0, "label", LYM, 1), (0, "label", MON, 3),
                                   (0, "label", EOS, 2), (1, "exclude", None, 1)))
    assert list(state["final_label"]) == [MON, NEU, LYM, MON]
    assert list(state["excluded"]) == [False, True, False, False]
    assert list(state["reviewed"]) == [True, True, False, False]


def test_exclusion_is_undone_by_a_later_label():
    state = st.apply_events(cells([NEU]), events((0, "exclude", None, 1), (0, "label", NEU, 2)))
    assert not state["excluded"].iloc[0] and state["final_label"].iloc[0] == NEU


def test_live_differential_drops_excluded_cells_and_counts_open_flags():
    state = st.apply_events(cells([NEU] * 6 + [LYM] * 4, flagged={0, 1, 2}),
                            events((0, "label", LYM, 1), (1, "exclude", None, 1)))
    row = st.live_differential(state, PAPER_CLASSES, RANGES, 5).iloc[0]
    assert row["total_cells"] == 9  # one excluded
    assert row["neutrophil_count"] == 4 and row["lymphocyte_count"] == 5
    assert row["needs_review"] == 1  # c2 still open
    assert row["lymphocyte_pct"] == pytest.approx(100 * 5 / 9)
    assert row["lymphocyte_ci_low"] < row["lymphocyte_pct"] < row["lymphocyte_ci_high"]


def test_sign_off_needs_every_flagged_cell_resolved():
    base = cells([NEU, NEU, LYM], flagged={0, 2})
    state = st.apply_events(base, events((0, "label", NEU, 1)))
    why = st.sign_refusal(state)
    assert why and "1 cell(s)" in why and "c2" in why
    machine = pd.Series({"sample_id": "S1", "run_date": "2031-01-01",
                         "computed_at": pd.Timestamp("2031-01-01", tz="UTC")})
    with pytest.raises(st.ReviewError, match="not confirmed"):
        st.signoff_tables(state, machine, PAPER_CLASSES, RANGES, 1, "ann", "f", "x" * 32,
                          st.now())
    state = st.apply_events(base, events((0, "label", NEU, 1), (2, "exclude", None, 2)))
    assert st.sign_refusal(state) is None
    row, signed = st.signoff_tables(state, machine, PAPER_CLASSES, RANGES, 1, "ann", "f",
                                    "x" * 32, st.now())
    r = row.iloc[0]
    assert (r["cells_before"], r["cells_after"], r["cells_excluded"]) == (3, 2, 1)
    assert r["lymphocyte_count_before"] == 1 and r["lymphocyte_count"] == 0
    assert r["neutrophil_pct"] == 100.0 and r["reviewer"] == "ann"
    assert list(signed["label"]) == [NEU, NEU, LYM] and signed["excluded"].sum() == 1


def test_all_excluded_cannot_be_signed():
    state = st.apply_events(cells([NEU]), events((0, "exclude", None, 1)))
    assert "every cell is excluded" in st.sign_refusal(state)


def test_agreement_per_machine_class():
    state = st.apply_events(cells([NEU, NEU, NEU, LYM, LYM]),
                            events((0, "label", LYM, 1), (1, "label", NEU, 1),
                                   (3, "exclude", None, 1)))
    counts = st.agreement_counts(state, PAPER_CLASSES)
    report = st.agreement(pd.DataFrame([counts, counts]), PAPER_CLASSES)
    neu, lym = report["per_class"][NEU], report["per_class"][LYM]
    assert (neu["confirmed"], neu["reclassified"], neu["excluded"]) == (4, 2, 0)
    assert neu["agreement"] == pytest.approx(4 / 6, abs=1e-4)
    assert (lym["confirmed"], lym["excluded"], lym["agreement"]) == (2, 2, 1.0)
    assert report["per_class"][EOS]["agreement"] is None  # no eosinophil was signed
    assert report["overall"]["agreement"] == pytest.approx(6 / 8)
    assert st.agreement(pd.DataFrame(), PAPER_CLASSES)["overall"]["agreement"] is None


@pytest.mark.parametrize("bad", ["", "   ", "a" * 81, "bell\x07"])
def test_reviewer_names_are_checked(bad):
    with pytest.raises(st.ReviewError):
        st.check_reviewer(bad)


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(st.ReviewError, match="not one of the checkpoint's classes"):
        st.check_label("BASOPHIL", PAPER_CLASSES)
    with pytest.raises(st.ReviewError, match="event id"):
        st.new_event_id("../../etc")


def test_manifest_groups_by_sample_and_drops_excluded():
    state = st.apply_events(cells([NEU, LYM, MON]), events((1, "label", EOS, 1),
                                                          (2, "exclude", None, 1)))
    machine = pd.Series({"sample_id": "S1", "run_date": "d", "computed_at": st.now()})
    _, signed = st.signoff_tables(state, machine, PAPER_CLASSES, RANGES, 1, "a", "f", "i", st.now())
    m = st.manifest_rows(signed)
    assert list(m["label"]) == [NEU, EOS] and set(m["group"]) == {"S1"}
    assert list(m.columns[:4]) == ["uri", "label", "group", "sample_id"]
    assert list(m["reviewed"]) == [False, True]


# ---------------------------------------------------------------- the store on disk

def _event(i: int, worker: int) -> dict:
    return {"event_id": uuid.uuid4().hex, "sample_id": "S 1/ä", "cell_id": f"c{i % 7}",
            "action": "label", "label": NEU, "machine_label": LYM, "machine_confidence": 0.5,
            "needs_review": True, "reviewer": f"r{worker}", "at": st.now(),
            "checkpoint_fingerprint": "f"}


def _writer(root: str, worker: int, n: int) -> None:
    store = st.ReviewStore(root)
    for i in range(n):
        store.append(_event(i, worker))


def test_concurrent_reviewers_lose_and_duplicate_nothing(tmp_path):
    """Two server processes and two threads of a third append to one sample at once."""
    root = str(tmp_path / "out")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(root, w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_writer, args=(root, w, 40)) for w in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ev = st.ReviewStore(root).events("S 1/ä")
    assert len(ev) == 160 and ev["event_id"].is_unique
    assert ev.groupby("reviewer").size().to_dict() == {f"r{w}": 40 for w in range(4)}


def test_retried_event_is_written_once(tmp_path):
    store = st.ReviewStore(str(tmp_path))
    e = _event(0, 0)
    assert store.append(e) and not store.append({**e, "label": MON})
    ev = store.events(e["sample_id"])
    assert len(ev) == 1 and ev["label"].iloc[0] == NEU


def _slow_writer(root: str) -> None:
    store = st.ReviewStore(root)
    i = 0
    while True:
        store.append(_event(i, 0))
        i += 1


def test_killed_server_leaves_only_whole_events(tmp_path):
    root = str(tmp_path / "out")
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_slow_writer, args=(root,))
    p.start()
    folder = tmp_path / "out" / "corrections"
    deadline = time.time() + 60
    while time.time() < deadline and (not folder.exists()
                                      or sum(1 for _ in folder.rglob("*.parquet")) < 20):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    ev = st.ReviewStore(root).events("S 1/ä")  # every published file reads back whole
    published = [f for f in folder.rglob("*.parquet") if not f.name.startswith(".")]
    assert len(ev) == len(published) >= 20 and ev["event_id"].is_unique


def test_latest_signoff_per_sample(tmp_path):
    store = st.ReviewStore(str(tmp_path))
    for i, who in enumerate(["ann", "bob"]):
        row = pd.DataFrame([{"sample_id": "S1", "signoff_id": f"{i:032x}", "reviewer": who,
                             "signed_at": st.now(), "checkpoint_fingerprint": "f",
                             "machine_computed_at": "t"}])
        cells_ = pd.DataFrame([{"sample_id": "S1", "cell_id": "c0", "label": NEU}])
        store.write_signoff(row, cells_, "2031-01-01")
        time.sleep(0.01)
    so = store.signoffs("f")
    assert len(so) == 1 and so["reviewer"].iloc[0] == "bob"
    assert store.signoffs("other").empty
    assert len(store.signed_cells(so)) == 1


def test_status_follows_signoffs_events_and_new_nights():
    t1, t2 = pd.Timestamp("2031-01-01", tz="UTC"), pd.Timestamp("2031-01-02", tz="UTC")
    samples = pd.DataFrame({"sample_id": ["A", "B", "C", "D"], "computed_at": [t1, t2, t1, t1]})
    signoffs = pd.DataFrame({"sample_id": ["A", "B"], "reviewer": ["ann", "bob"],
                             "signed_at": [t2, t2],
                             "machine_computed_at": [st.stamp(t1), st.stamp(t1)]})
    table = st.status_table(samples, signoffs, {st.sample_key("C")})
    # B was signed, then a later night changed its differential: to be signed again.
    assert list(table["status"]) == ["signed", "in review", "in review", "unreviewed"]
    assert list(table["reviewer"]) == ["ann", "bob", "", ""]
    for i, row in samples.iterrows():
        so = signoffs.set_index("sample_id").loc[row["sample_id"]] \
            if row["sample_id"] in set(signoffs["sample_id"]) else None
        assert st.status_of(row, so, row["sample_id"] == "C") == table["status"][i]
    empty = st.status_table(samples, signoffs.iloc[:0], set())
    assert set(empty["status"]) == {"unreviewed"}
