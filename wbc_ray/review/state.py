"""Review state: pure rules over (cells, events) and the append-only store that holds them.

A review *event* is one action on one cell: ``label`` (the reviewer's class; equal to the
machine's label it is a confirmation) or ``exclude`` (an artefact or smudge, not counted).
A cell's state is its latest event (by server time, then event id); a cell without events
keeps the machine's label. At sign-off every counted cell's final label is the reviewed
one: untouched cells are accepted as pre-classified, as on a CellaVision review screen.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from wbc_ray import storage
from wbc_ray.schema import BOX_COLUMNS
from wbc_ray.scoring.differential import differential

KEY = ["sample_id", "cell_id"]
ACTIONS = ("label", "exclude")
EVENT_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_REVIEWER = 80
EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("sample_id", pa.string()), ("cell_id", pa.string()),
    ("action", pa.string()), ("label", pa.string()), ("machine_label", pa.string()),
    ("machine_confidence", pa.float32()), ("needs_review", pa.bool_()),
    ("reviewer", pa.string()), ("at", pa.timestamp("us", tz="UTC")),
    ("checkpoint_fingerprint", pa.string()),
])
STATUSES = ("unreviewed", "in review", "signed")


class ReviewError(ValueError):
    """A request the review rules refuse; the message says why (shown to the reviewer)."""


class Conflict(ReviewError):
    """The sample changed under the request (signed, or edited by another reviewer)."""


# ---------------------------------------------------------------- pure rules

def check_label(label: str, classes: Sequence[str]) -> str:
    if label not in classes:
        raise ReviewError(f"label {label!r} is not one of the checkpoint's classes "
                          f"({', '.join(classes)})")
    return label


def check_reviewer(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ReviewError("enter the reviewer's name before reviewing")
    if len(name) > MAX_REVIEWER or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ReviewError(f"reviewer name must be 1-{MAX_REVIEWER} printable characters")
    return name


def new_event_id(given: str | None = None) -> str:
    """The client's id (a retried request reuses it, so nothing duplicates) or a fresh one."""
    if given is None:
        return uuid.uuid4().hex
    if not EVENT_ID.match(given):
        raise ReviewError(f"event id must be 32 lower-case hex digits, got {given!r}")
    return given


def latest_events(events: pd.DataFrame) -> pd.DataFrame:
    """The latest event per cell."""
    return events.sort_values(["at", "event_id"], kind="stable") \
        .drop_duplicates(KEY, keep="last").reset_index(drop=True)


def apply_events(cells: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """``cells`` (machine ``label``) plus ``reviewed``, ``excluded`` and ``final_label``."""
    last = latest_events(events)[[*KEY, "action", "label", "reviewer"]] \
        .rename(columns={"label": "reviewed_label"}) if len(events) else \
        pd.DataFrame(columns=[*KEY, "action", "reviewed_label", "reviewer"])
    out = cells.merge(last, on=KEY, how="left")
    out["reviewed"] = out["action"].notna()
    out["excluded"] = out["action"] == "exclude"
    relabel = out["action"] == "label"
    out["final_label"] = np.where(relabel, out["reviewed_label"], out["label"])
    return out.drop(columns=["reviewed_label"])


def unresolved(state: pd.DataFrame) -> pd.DataFrame:
    """Cells flagged ``needs_review`` that no reviewer has acted on."""
    return state[state["needs_review"].astype(bool) & ~state["reviewed"]]


def live_differential(state: pd.DataFrame, classes: Sequence[str],
                      ranges: Mapping[str, tuple[float, float]], min_cells: int
                      ) -> pd.DataFrame:
    """The differential of the counted (non-excluded) cells with their current labels.

    ``needs_review`` counts the flagged cells still unresolved. Empty when all are excluded.
    """
    counted = state[~state["excluded"]]
    frame = pd.DataFrame({"sample_id": counted["sample_id"], "label": counted["final_label"],
                          "needs_review": counted["needs_review"].astype(bool)
                          & ~counted["reviewed"]})
    return differential(frame, classes, ranges, min_cells)


def sign_refusal(state: pd.DataFrame) -> str | None:
    """Why the sample cannot be signed yet, or None."""
    left = unresolved(state)
    if len(left):
        return (f"{len(left)} cell(s) flagged for review are not confirmed yet "
                f"(e.g. {', '.join(left['cell_id'].head(3))}); confirm, reclassify or exclude "
                "them first")
    if state["excluded"].all():
        return "every cell is excluded: there is no differential to sign"
    return None


def agreement_counts(state: pd.DataFrame, classes: Sequence[str]) -> dict[str, int]:
    """Per machine class: cells kept as pre-classified, reclassified, excluded."""
    out = {}
    for c in classes:
        mine = state[state["label"] == c]
        kept = (~mine["excluded"]) & (mine["final_label"] == c)
        out[f"{c.lower()}_confirmed"] = int(kept.sum())
        out[f"{c.lower()}_reclassified"] = int(((~mine["excluded"]) & ~kept).sum())
        out[f"{c.lower()}_excluded"] = int(mine["excluded"].sum())
    return out


def signoff_tables(state: pd.DataFrame, machine: pd.Series, classes: Sequence[str],
                   ranges: Mapping[str, tuple[float, float]], min_cells: int, reviewer: str,
                   fingerprint: str, signoff_id: str, at: pd.Timestamp
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the signed differential row, the reviewed cells) of one sample; refuses early sign-off."""
    why = sign_refusal(state)
    if why:
        raise ReviewError(f"cannot sign {machine['sample_id']}: {why}")
    row = live_differential(state, classes, ranges, min_cells)
    counted = state[~state["excluded"]]
    before = {f"{c.lower()}_count_before": int((state["label"] == c).sum()) for c in classes}
    row = row.assign(
        signoff_id=signoff_id, reviewer=reviewer, signed_at=at,
        checkpoint_fingerprint=fingerprint, machine_run_date=str(machine["run_date"]),
        machine_computed_at=stamp(machine["computed_at"]),
        cells_before=len(state), cells_after=len(counted),
        cells_excluded=int(state["excluded"].sum()),
        cells_reclassified=int((counted["final_label"] != counted["label"]).sum()),
        cells_reviewed=int(state["reviewed"].sum()), **before,
        **agreement_counts(state, classes))
    cells = state[[*KEY, "uri", *[c for c in BOX_COLUMNS if c in state], "label", "confidence",
                   "needs_review", "final_label", "excluded", "reviewed"]] \
        .rename(columns={"label": "machine_label", "final_label": "label"}) \
        .assign(signoff_id=signoff_id)
    return row, cells.reset_index(drop=True)


def stamp(value) -> str:
    """A timestamp as the ISO string compared between tables."""
    return pd.Timestamp(value).isoformat()


def status_of(machine: pd.Series, signoff: pd.Series | None, has_events: bool) -> str:
    """Signed only while the sign-off covers the sample's current machine differential."""
    if signoff is not None and signoff["machine_computed_at"] == stamp(machine["computed_at"]):
        return "signed"
    return "in review" if has_events or signoff is not None else "unreviewed"


def status_table(samples: pd.DataFrame, signoffs: pd.DataFrame, keys_with_events: set[str]
                 ) -> pd.DataFrame:
    """:func:`status_of` for every sample at once: ``status``, ``reviewer``, ``signed_at``."""
    so = signoffs.set_index("sample_id")
    sids = samples["sample_id"]
    covered = sids.map(so["machine_computed_at"]) if len(so) else pd.Series(None, index=sids.index)
    signed = covered.notna() & (covered == samples["computed_at"].map(stamp))
    busy = covered.notna() | sids.map(sample_key).isin(keys_with_events)
    return pd.DataFrame({
        "status": np.select([signed, busy], ["signed", "in review"], "unreviewed"),
        "reviewer": sids.map(so["reviewer"]).fillna("") if len(so) else "",
        "signed_at": sids.map(so["signed_at"]).where(signed) if len(so) else None,
    }, index=samples.index)


def agreement(signoffs: pd.DataFrame, classes: Sequence[str]) -> dict:
    """How often the machine's pre-classification was kept, per machine class, over sign-offs.

    ``agreement`` = confirmed / (confirmed + reclassified); excluded cells are reported
    apart (an artefact has no right class). None where no cell of the class was signed.
    """
    per_class, totals = {}, {"confirmed": 0, "reclassified": 0, "excluded": 0}
    for c in classes:
        k = c.lower()
        got = {m: int(signoffs[f"{k}_{m}"].sum()) if len(signoffs) else 0 for m in totals}
        for m in totals:
            totals[m] += got[m]
        per_class[c] = {**got, "agreement": _ratio(got)}
    return {"samples_signed": len(signoffs), "per_class": per_class,
            "overall": {**totals, "agreement": _ratio(totals)}}


def _ratio(got: dict) -> float | None:
    n = got["confirmed"] + got["reclassified"]
    return round(got["confirmed"] / n, 4) if n else None


def manifest_rows(signed_cells: pd.DataFrame) -> pd.DataFrame:
    """Reviewed cells -> a training manifest (``uri,label,group,sample_id`` + box, provenance).

    ``group`` is the sample, so a grouped split keeps a slide's cells together.
    """
    kept = signed_cells[~signed_cells["excluded"].astype(bool)]
    out = pd.DataFrame({"uri": kept["uri"], "label": kept["label"],
                        "group": kept["sample_id"], "sample_id": kept["sample_id"],
                        "cell_id": kept["cell_id"]})
    for c in BOX_COLUMNS:
        out[c] = kept[c].astype("float64") if c in kept else np.nan
    out["machine_label"] = kept["machine_label"]
    out["reviewed"] = kept["reviewed"].astype(bool)
    return out.sort_values(KEY, kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- the append-only store

def sample_key(sample_id: str) -> str:
    """A safe, deterministic folder/file name for any sample id."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", sample_id)[:40]
    digest = hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{slug}-{digest}"


class ReviewStore:
    """``corrections/``, ``signed/``, ``signed_cells/`` and ``review/summary.json`` under root.

    Files are immutable once published, so each is read once and kept (a few hundred bytes
    per event); listings are re-read on every call, so other reviewers' events appear.
    """

    def __init__(self, root: str):
        self.root = root
        self._rows: dict[str, dict] = {}  # published path -> its row(s)
        self._lock = threading.Lock()

    def _uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def _list(self, uri: str, recursive: bool = False) -> list[str]:
        fs, path = storage.filesystem(uri)
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache(path)
        if not fs.exists(path):
            return []
        found = fs.find(path) if recursive else fs.ls(path, detail=False)
        return sorted(storage.uri_of(fs, p) for p in found
                      if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith("."))

    def _read(self, uri: str) -> list[dict]:
        with self._lock:
            if uri in self._rows:
                return self._rows[uri]
        rows = storage.read_parquet(uri).to_dict("records")
        with self._lock:
            self._rows[uri] = rows
        return rows

    def _frame(self, uris: list[str], schema: pa.Schema | None = None) -> pd.DataFrame:
        rows = [r for u in uris for r in self._read(u)]
        if rows:
            return pd.DataFrame(rows)
        return schema.empty_table().to_pandas() if schema is not None else pd.DataFrame()

    # events
    def event_uri(self, sample_id: str, event_id: str) -> str:
        return self._uri("corrections", sample_key(sample_id), f"{event_id}.parquet")

    def append(self, event: dict) -> bool:
        """Publish one event; False (nothing written) when its id is already published."""
        uri = self.event_uri(event["sample_id"], event["event_id"])
        if storage.exists(uri):
            return False
        storage.write_parquet(uri, pd.DataFrame([event]), EVENT_SCHEMA)
        return True

    def events(self, sample_id: str) -> pd.DataFrame:
        uris = self._list(self._uri("corrections", sample_key(sample_id)))
        frame = self._frame(uris, EVENT_SCHEMA)
        return frame[frame["sample_id"] == sample_id].reset_index(drop=True)

    def keys_with_events(self) -> set[str]:
        fs, path = storage.filesystem(self._uri("corrections"))
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache(path)
        if not fs.exists(path):
            return set()
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}

    def all_events(self) -> pd.DataFrame:
        return self._frame(self._list(self._uri("corrections"), recursive=True), EVENT_SCHEMA)

    # sign-offs
    def _signed_name(self, run_date: str, sample_id: str, fingerprint: str, signoff_id: str,
                     table: str) -> str:
        return self._uri(table, f"run_date={run_date}",
                         f"{sample_key(sample_id)}-{fingerprint}-{signoff_id}.parquet")

    def write_signoff(self, row: pd.DataFrame, cells: pd.DataFrame, run_date: str) -> str:
        """``signed_cells`` first, then the ``signed`` row that makes it current (the commit)."""
        r = row.iloc[0]
        args = (run_date, r["sample_id"], r["checkpoint_fingerprint"], r["signoff_id"])
        storage.write_parquet(self._signed_name(*args, "signed_cells"), cells)
        uri = self._signed_name(*args, "signed")
        storage.write_parquet(uri, row)
        return uri

    def signoffs(self, fingerprint: str | None = None) -> pd.DataFrame:
        """The latest sign-off per sample (for ``fingerprint`` when given), with its file."""
        uris = self._list(self._uri("signed"), recursive=True)
        rows = [{**r, "_uri": u} for u in uris for r in self._read(u)]
        if not rows:
            return pd.DataFrame(columns=["sample_id", "signoff_id", "signed_at", "_uri",
                                         "machine_computed_at", "reviewer"])
        frame = pd.DataFrame(rows)
        if fingerprint is not None:
            frame = frame[frame["checkpoint_fingerprint"] == fingerprint]
        return frame.sort_values(["signed_at", "signoff_id"], kind="stable") \
            .drop_duplicates("sample_id", keep="last").reset_index(drop=True)

    def signed_cells(self, signoffs: pd.DataFrame) -> pd.DataFrame:
        """The reviewed cells of the given sign-offs (read one file per sign-off)."""
        parts = [storage.read_parquet(u.replace(storage.join(self.root, "signed"),
                                                storage.join(self.root, "signed_cells"), 1))
                 for u in signoffs["_uri"]]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=[*KEY, "uri", "label", "machine_label", "excluded", "reviewed"])

    def write_summary(self, summary: dict) -> str:
        uri = self._uri("review", "summary.json")
        storage.write_text(uri, json.dumps(summary, indent=2, default=str))
        return uri


def now() -> pd.Timestamp:
    return pd.Timestamp(dt.datetime.now(dt.UTC)).floor("us")


def write_manifest(rows: pd.DataFrame, output: str) -> str:
    """The manifest as Parquet (or CSV when ``output`` ends in .csv), published atomically."""
    if output.lower().endswith(".csv"):
        storage.write_text(output, rows.to_csv(index=False))
    else:
        storage.write_bytes(output, _parquet(rows))
    return output


def _parquet(df: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    return buf.getvalue()
