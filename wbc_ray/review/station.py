"""The review operations the web pages call: worklist, sample view, act, sign, report, export."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from wbc_ray.review import state as st
from wbc_ray.review.source import ScoredRun
from wbc_ray.schema import BOX_COLUMNS

SORTS = {  # name -> (columns, ascending); "flagged" puts abnormal and unreviewed work first
    "flagged": (["flagged", "needs_review", "sample_id"], [False, False, True]),
    "sample": (["sample_id"], [True]),
    "cells": (["total_cells", "sample_id"], [False, True]),
    "review": (["needs_review", "sample_id"], [False, True]),
    "status": (["status_rank", "sample_id"], [True, True]),
    "date": (["run_date", "sample_id"], [False, True]),
}
PAGE_SIZE = 50


@dataclass(frozen=True)
class ReviewSettings:
    reference_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    min_cells: int = 100


class ReviewStation:
    """One scoring output under review (any number of reviewers and server processes)."""

    def __init__(self, scored: str, settings: ReviewSettings | None = None,
                 fingerprint: str | None = None):
        self.run = ScoredRun(scored, fingerprint)
        self.store = st.ReviewStore(scored)
        self.settings = settings or ReviewSettings()
        stray = sorted(set(self.settings.reference_ranges) - set(self.classes))
        if stray:
            raise ValueError(f"reference ranges name {stray}, which the checkpoint does not "
                             f"predict (its classes: {list(self.classes)})")
        self._sign_lock = threading.Lock()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.run.classes

    # ------------------------------------------------------------ worklist
    def statuses(self) -> pd.DataFrame:
        """Every sample's machine row plus status, reviewer and signed_at."""
        samples = self.run.samples().copy()
        table = st.status_table(samples, self.store.signoffs(self.run.info.fingerprint),
                                self.store.keys_with_events())
        samples[["status", "reviewer", "signed_at"]] = table
        samples["status_rank"] = samples["status"].map({s: i for i, s in enumerate(st.STATUSES)})
        samples["flagged"] = (samples["flags"].fillna("") != "") | samples["insufficient_count"]
        return samples

    def worklist(self, *, date: str = "latest", status: str = "", flagged: bool = False,
                 query: str = "", sort: str = "flagged", page: int = 1,
                 page_size: int | None = None) -> dict:
        if sort not in SORTS:
            raise st.ReviewError(f"sort must be one of {sorted(SORTS)}, got {sort!r}")
        if status and status not in st.STATUSES:
            raise st.ReviewError(f"status must be one of {list(st.STATUSES)}, got {status!r}")
        rows = self.statuses()
        counts = rows["status"].value_counts().to_dict()
        dates = sorted(set(rows["run_date"]), reverse=True)
        date = dates[0] if date == "latest" and dates else date
        if date not in ("all", *dates):
            raise st.ReviewError(f"no samples for run date {date!r} (dates: {dates})")
        if date != "all":
            rows = rows[rows["run_date"] == date]
        if status:
            rows = rows[rows["status"] == status]
        if flagged:
            rows = rows[rows["flagged"]]
        if query:
            rows = rows[rows["sample_id"].str.contains(query, case=False, regex=False)]
        page_size = page_size or PAGE_SIZE
        cols, asc = SORTS[sort]
        rows = rows.sort_values(cols, ascending=asc, kind="stable")
        pages = max(1, math.ceil(len(rows) / page_size))
        page = min(max(1, page), pages)
        return {"rows": rows.iloc[(page - 1) * page_size: page * page_size], "total": len(rows),
                "page": page, "pages": pages, "date": date, "dates": dates,
                "counts": {s: int(counts.get(s, 0)) for s in st.STATUSES}}

    # ------------------------------------------------------------ one sample
    def sample_state(self, sample_id: str) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame]:
        """(machine row, cells with review state, events) or KeyError."""
        machine = self.run.sample(sample_id)
        if machine is None or not self.run.has_sample(sample_id):
            raise KeyError(sample_id)
        events = self.store.events(sample_id)
        return machine, st.apply_events(self.run.cells(sample_id), events), events

    def differential(self, state: pd.DataFrame) -> pd.DataFrame:
        return st.live_differential(state, self.classes, self.settings.reference_ranges,
                                    self.settings.min_cells)

    def status(self, sample_id: str, machine: pd.Series, events: pd.DataFrame) -> tuple[str, dict]:
        signoffs = self.store.signoffs(self.run.info.fingerprint)
        mine = signoffs[signoffs["sample_id"] == sample_id]
        so = mine.iloc[0] if len(mine) else None
        return st.status_of(machine, so, len(events) > 0), ({} if so is None else so.to_dict())

    def act(self, sample_id: str, cell_id: str, action: str, label: str | None,
            reviewer: str, event_id: str | None = None) -> dict:
        """Record one review action; returns the sample's live summary."""
        if action not in st.ACTIONS:
            raise st.ReviewError(f"action must be one of {list(st.ACTIONS)}, got {action!r}")
        reviewer = st.check_reviewer(reviewer)
        if action == "label":
            st.check_label(label, self.classes)
        else:
            label = None
        machine, state, events = self.sample_state(sample_id)
        cell = state[state["cell_id"] == cell_id]
        if cell.empty:
            raise KeyError(cell_id)
        status, so = self.status(sample_id, machine, events)
        if status == "signed":
            raise st.Conflict(f"{sample_id} was signed by {so['reviewer']} at {so['signed_at']}; "
                              "signed samples are read-only")
        c = cell.iloc[0]
        self.store.append({
            "event_id": st.new_event_id(event_id), "sample_id": sample_id, "cell_id": cell_id,
            "action": action, "label": label, "machine_label": c["label"],
            "machine_confidence": float(c["confidence"]), "needs_review": bool(c["needs_review"]),
            "reviewer": reviewer, "at": st.now(),
            "checkpoint_fingerprint": self.run.info.fingerprint})
        return self.live(sample_id)

    def live(self, sample_id: str, loaded: tuple | None = None) -> dict:
        """What the sample page shows and updates after every action (JSON-ready).

        ``loaded``: the :meth:`sample_state` triple when the caller has just read it.
        """
        machine, state, events = loaded or self.sample_state(sample_id)
        status, so = self.status(sample_id, machine, events)
        diff = self.differential(state)
        row = diff.iloc[0].to_dict() if len(diff) else {}
        return {
            "sample_id": sample_id, "status": status, "events": len(events),
            "signed_by": so.get("reviewer") if status == "signed" else None,
            "unresolved": len(st.unresolved(state)),
            "counted": int((~state["excluded"]).sum()), "excluded": int(state["excluded"].sum()),
            "refusal": st.sign_refusal(state),
            "differential": [{
                "class": c, "count": int(row.get(f"{c.lower()}_count", 0)),
                "pct": _num(row.get(f"{c.lower()}_pct")),
                "ci_low": _num(row.get(f"{c.lower()}_ci_low")),
                "ci_high": _num(row.get(f"{c.lower()}_ci_high")),
                "flag": row.get(f"{c.lower()}_flag"),
                "machine_pct": _num(machine.get(f"{c.lower()}_pct"))} for c in self.classes],
            "flags": row.get("flags", ""),
            "cells": {r.cell_id: {"label": r.final_label, "excluded": bool(r.excluded),
                                  "reviewed": bool(r.reviewed)}
                      for r in state.itertuples(index=False)},
        }

    def sign(self, sample_id: str, reviewer: str, seen_events: int | None = None) -> dict:
        """Sign the sample's reviewed differential (refused while flagged cells remain)."""
        reviewer = st.check_reviewer(reviewer)
        with self._sign_lock:  # one sign-off at a time in this process
            machine, state, events = self.sample_state(sample_id)
            status, so = self.status(sample_id, machine, events)
            if status == "signed":
                raise st.Conflict(f"{sample_id} is already signed by {so['reviewer']}")
            if seen_events is not None and seen_events != len(events):
                raise st.Conflict(f"{sample_id} changed while you reviewed it ({len(events)} "
                                  f"actions now, you saw {seen_events}); reload the page")
            row, cells = st.signoff_tables(
                state, machine, self.classes, self.settings.reference_ranges,
                self.settings.min_cells, reviewer, self.run.info.fingerprint,
                st.new_event_id(), st.now())
            self.store.write_signoff(row, cells, str(machine["run_date"]))
        self.write_summary()
        return self.live(sample_id)

    # ------------------------------------------------------------ run-wide
    def agreement(self) -> dict:
        signed = self.statuses()
        signed = set(signed.loc[signed["status"] == "signed", "sample_id"])
        so = self.store.signoffs(self.run.info.fingerprint)
        return st.agreement(so[so["sample_id"].isin(signed)], self.classes)

    def summary(self) -> dict:
        rows = self.statuses()
        counts = rows["status"].value_counts().to_dict()
        return {"scored": self.run.info.root, "checkpoint_fingerprint": self.run.info.fingerprint,
                "classes": list(self.classes), "generated_at": st.now().isoformat(),
                "samples": {"total": len(rows),
                            **{s: int(counts.get(s, 0)) for s in st.STATUSES}},
                "agreement": self.agreement()}

    def write_summary(self) -> str:
        return self.store.write_summary(self.summary())

    def export(self, output: str) -> dict:
        """Write the training manifest of every signed sample; returns counts and paths."""
        rows = self.statuses()
        signed = set(rows.loc[rows["status"] == "signed", "sample_id"])
        so = self.store.signoffs(self.run.info.fingerprint)
        so = so[so["sample_id"].isin(signed)]
        manifest = st.manifest_rows(self.store.signed_cells(so))
        st.write_manifest(manifest, output)
        summary = self.write_summary()
        return {"manifest": output, "rows": len(manifest), "samples": len(so),
                "reviewed_rows": int(manifest["reviewed"].sum()),
                "reclassified_rows": int((manifest["label"] != manifest["machine_label"]).sum()),
                "summary": summary}


def _num(v) -> float | None:
    return None if v is None or v != v else round(float(v), 2)


def has_boxes(cells: pd.DataFrame) -> pd.Series:
    return cells[list(BOX_COLUMNS)].notna().all(axis=1)
