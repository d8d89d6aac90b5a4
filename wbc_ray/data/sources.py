"""Inputs -> a table of records (metadata only, no pixels).

Two sources, one output shape:
- a folder per class, optionally under a split level (``<root>/<CLASS>/*`` or
  ``<root>/<SPLIT>/<CLASS>/*``, the Kaggle layout), listed with one recursive call;
- a manifest (CSV or Parquet) with ``uri`` and optional ``label``, ``sample_id``,
  ``cell_id``, ``group``, ``split``, ``xmin``, ``ymin``, ``xmax``, ``ymax``. Big archives
  should use a manifest: listing millions of keys is slow on object stores.

Every file seen ends up either in ``records`` or in ``rejected`` with a reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from wbc_ray import storage
from wbc_ray.classes import normalise_class
from wbc_ray.data.ingest import (
    NOT_UTF8,
    RECORD_COLUMNS,
    is_manifest,
    list_files,
    manifest_base,
    numeric_boxes,
    printable,
    read_table,
    resolve,
    undecodable,
)

__all__ = ["Listing", "list_inputs", "is_manifest", "read_table", "attach_groups",
           "find_groups_file", "SPLIT_NAMES", "RECORD_COLUMNS"]
SPLIT_NAMES = {"TRAIN": "train", "TRAINING": "train", "VAL": "val", "VALID": "val",
               "VALIDATION": "val", "DEV": "val", "TEST": "test", "TESTING": "test"}


@dataclass(frozen=True)
class Listing:
    records: pd.DataFrame  # one row per input, RECORD_COLUMNS
    rejected: pd.DataFrame  # uri, reason: inputs that can never be used
    root: str  # the URI the relative ``path`` column is relative to

    @property
    def seen(self) -> int:
        return len(self.records) + len(self.rejected)

    def fingerprint(self) -> str:
        """Content-independent identity of the input set (paths, labels, sizes)."""
        h = hashlib.sha256()
        cols = ["path", "label", "size"] if "size" in self.records else ["path", "label"]
        for row in self.records[cols].astype(str).itertuples(index=False):
            h.update("|".join(row).encode())
            h.update(b"\n")
        return h.hexdigest()[:16]


def list_inputs(uri: str, classes: tuple[str, ...]) -> Listing:
    """Folder or manifest at ``uri`` -> :class:`Listing`. Fails fast on a wrong URI."""
    storage.check_readable(uri)
    return read_manifest(uri, classes) if is_manifest(uri) else list_folder(uri, classes)


def _empty_records() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in RECORD_COLUMNS})


def _finish(rows: list[dict], rejected: list[dict], root: str) -> Listing:
    # Parquet and JSON hold UTF-8 only: other names are reported with their real bytes.
    bad = [r for r in rows if undecodable(str(r["uri"]), str(r["path"]))]
    rejected = [{"uri": printable(str(r["uri"])), "reason": r["reason"]} for r in rejected]
    rejected += [{"uri": printable(str(r["uri"])), "reason": NOT_UTF8} for r in bad]
    rows = [r for r in rows if not undecodable(str(r["uri"]), str(r["path"]))]
    rec = pd.DataFrame(rows) if rows else _empty_records()
    for c in RECORD_COLUMNS:
        if c not in rec:
            rec[c] = None
    rec = numeric_boxes(rec).sort_values("path", kind="stable").reset_index(drop=True)
    rej = pd.DataFrame(rejected, columns=["uri", "reason"])
    return Listing(rec, rej, root)


def list_folder(uri: str, classes: tuple[str, ...]) -> Listing:
    """List ``<root>/<CLASS>/*`` or ``<root>/<SPLIT>/<CLASS>/*`` with one recursive call."""
    root, rels = list_files(uri)
    rows, rejected = [], []
    # Split level present when the top-level folders are split names rather than classes.
    tops = {r.split("/")[0] for r in rels if "/" in r}
    split_level = bool(tops) and all(normalise_class(t, classes) is None for t in tops) and any(
        t.upper() in SPLIT_NAMES or t.upper().startswith("TEST") for t in tops)
    for rel, (full, size) in sorted(rels.items()):
        parts = rel.split("/")
        name = parts[-1]
        if name.startswith("."):
            rejected.append({"uri": full, "reason": "hidden file"})
            continue
        depth = 3 if split_level else 2
        if len(parts) < depth:
            rejected.append({"uri": full, "reason": "file outside a class folder"})
            continue
        class_dir = parts[1] if split_level else parts[0]
        label = normalise_class(class_dir, classes)
        if label is None:
            rejected.append({"uri": full, "reason": f"unknown class folder {class_dir!r} "
                                                   f"(classes: {', '.join(classes)})"})
            continue
        rows.append({"uri": full, "path": rel, "label": label, "size": size,
                     "folder_split": parts[0] if split_level else None})
    return _finish(rows, rejected, root)


def read_manifest(uri: str, classes: tuple[str, ...]) -> Listing:
    """Manifest rows -> records; relative ``uri`` values resolve against the manifest's folder."""
    df = read_table(uri)
    if "uri" not in df.columns:
        raise ValueError(f"{uri}: manifest needs a 'uri' column (has {list(df.columns)})")
    base = manifest_base(uri)
    rows, rejected = [], []
    for rec in df.to_dict("records"):
        u = resolve(base, str(rec["uri"]))
        rec["uri"] = u
        rec["path"] = u
        raw = rec.get("label")
        if raw is not None and raw == raw and str(raw) != "":
            label = normalise_class(str(raw), classes)
            if label is None:
                rejected.append({"uri": u, "reason": f"unknown label {raw!r}"})
                continue
            rec["label"] = label
        else:
            rec["label"] = None
        if "split" in rec:
            rec["folder_split"] = rec.pop("split")
        rows.append(rec)
    return _finish(rows, rejected, base)


def attach_groups(listing: Listing, groups_uri: str, column: str) -> Listing:
    """Join a group per record from a CSV of ``path`` (relative to the data root) -> group."""
    g = read_table(groups_uri)
    if "path" not in g or column not in g:
        raise ValueError(f"{groups_uri}: needs columns 'path' and {column!r} (has {list(g)})")
    mapping = dict(zip(g["path"].astype(str), g[column].astype(str), strict=True))
    rec = listing.records.copy()
    rec["group"] = rec["path"].map(mapping)
    missing = rec["group"].isna()
    if missing.any():
        raise ValueError(f"{groups_uri}: no {column!r} for {int(missing.sum())} of {len(rec)} "
                         f"images, e.g. {rec.loc[missing, 'path'].iloc[0]!r}")
    return Listing(rec, listing.rejected, listing.root)


def find_groups_file(uri: str) -> str | None:
    """A ``groups.csv`` or ``source_originals.csv`` in the data folder or beside it."""
    if is_manifest(uri):
        return None
    parent = uri.rstrip("/").rsplit("/", 1)[0]
    for folder in (uri.rstrip("/"), parent):
        for name in ("groups.csv", "source_originals.csv"):
            candidate = storage.join(folder, name)
            if storage.exists(candidate):
                return candidate
    return None
