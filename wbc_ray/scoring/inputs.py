"""Scoring inputs -> one row per cell to score, plus the inputs that can never be scored.

Three input kinds, detected from the URI and the files under it:

- ``manifest``: a CSV or Parquet file (``.csv``, ``.parquet``, ``.pq``) with columns ``uri``
  and ``sample_id``, optional ``cell_id`` and ``xmin, ymin, xmax, ymax`` (a crop box in
  source pixels). Relative ``uri`` values resolve against the manifest's folder. Without a
  ``cell_id`` the cell is named by its ``uri`` (plus ``#xmin,ymin,xmax,ymax`` when boxed).
  The right choice for big archives: listing millions of object-store keys is slow.
- ``voc``: slide fields with Pascal-VOC XML boxes (any ``.xml`` under the input). The XML
  of ``…/JPEGImages/<stem>.jpg`` is ``…/Annotations/<stem>.xml`` (the BCCD layout) or
  ``<stem>.xml`` beside the image. Every ``WBC`` object is one cell, ``cell_id`` =
  ``<stem>#<k>`` (k counts the image's WBC boxes from 0 in document order). The sample is
  the first folder under the input (``<input>/<sample>/[JPEGImages/]*.jpg``), or the image
  stem when the image sits at the top level or directly in ``<input>/JPEGImages`` (one field
  per sample, as in BCCD). A field without XML, a malformed XML or one without any WBC box
  is rejected with the reason (``cell_id`` = ``<stem>``, no ``#``).
- ``folder``: ``<input>/<sample_id>/**/<image>``; ``cell_id`` is the path under the sample
  folder. Files that are not images (by extension) and files outside a sample folder are
  rejected with the reason.

Every input is identified by ``(sample_id, cell_id)``; that key is what incremental runs
compare against the published outputs. Sample ids that could escape an output prefix
(``..``, ``/``, ``\\``, control characters, empty) are rejected, never rewritten: a
silently renamed sample is worse than a visible quarantine row.
"""

from __future__ import annotations

import logging
import posixpath
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pandas as pd

from wbc_ray import storage
from wbc_ray.data.decode import IMAGE_EXTENSIONS
from wbc_ray.data.ingest import (
    NOT_UTF8,
    REJECT_COLUMNS,
    is_manifest,
    list_files,
    manifest_base,
    printable,
    read_table,
    resolve,
    undecodable,
)
from wbc_ray.data.ingest import SCORE_COLUMNS as RECORD_COLUMNS
from wbc_ray.schema import BOX_COLUMNS
from wbc_ray.schema import KEY as _KEY

log = logging.getLogger(__name__)

KEY = list(_KEY)
MAX_SAMPLE_ID = 200  # characters; longer ids are rejected
VOC_CELL_NAME = "WBC"


@dataclass(frozen=True)
class Inputs:
    kind: str  # "folder", "manifest" or "voc"
    records: pd.DataFrame  # RECORD_COLUMNS, one row per cell to score, sorted by sample
    rejected: pd.DataFrame  # REJECT_COLUMNS: inputs that can never be scored
    duplicates: int  # rows dropped because their (sample_id, cell_id) came earlier
    sample_ids: frozenset[str] = frozenset()  # every sample seen, with or without cells

    @property
    def seen(self) -> int:
        """Distinct inputs: every one must end up scored or quarantined."""
        return len(self.records) + len(self.rejected)


def sample_id_problem(sample_id: str) -> str | None:
    """Why ``sample_id`` cannot be used, or None when it is safe."""
    if not sample_id.strip():
        return "empty sample_id"
    if sample_id in (".", ".."):
        return f"sample_id {sample_id!r} would escape the output prefix"
    if "/" in sample_id or "\\" in sample_id:
        return f"sample_id {sample_id!r} contains a path separator"
    if any(unicodedata.category(ch).startswith("C") for ch in sample_id):
        return f"sample_id {sample_id!r} contains control characters"
    if len(sample_id) > MAX_SAMPLE_ID:
        return f"sample_id longer than {MAX_SAMPLE_ID} characters"
    return None


def read_inputs(uri: str, exclude: str | None = None) -> Inputs:
    """Detect the input kind at ``uri`` and list it. ``exclude``: a prefix to ignore."""
    storage.check_readable(uri)
    if is_manifest(uri):
        return manifest_inputs(uri)
    fs, _ = storage.filesystem(uri)
    _, listed = list_files(uri, exclude)
    files = {rel: u for rel, (u, _) in listed.items()}
    folders = _sample_folders(uri, exclude)
    if not files and not folders:
        raise ValueError(f"{uri}: no files to score")
    if any(rel.lower().endswith(".xml") for rel in files):
        return voc_inputs(fs, files)
    inputs = folder_inputs(files)
    return Inputs(inputs.kind, inputs.records, inputs.rejected, inputs.duplicates,
                  inputs.sample_ids | folders)


def _sample_folders(uri: str, exclude: str | None) -> frozenset[str]:
    """The sample folders directly under ``uri``, empty ones included (a listing of files
    never shows an empty folder, and a lab expects "sample X: 0 cells", not silence)."""
    fs, root = storage.filesystem(uri)
    skip = storage.filesystem(exclude)[1].rstrip("/") if exclude else None
    out = set()
    for entry in fs.ls(root, detail=True):
        name = entry["name"].rstrip("/")
        if entry.get("type") == "directory" and name != skip:
            sample = posixpath.basename(name)
            if not sample.startswith(".") and sample_id_problem(printable(sample)) is None:
                out.add(sample)
    return frozenset(out)


def _is_image(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_EXTENSIONS)


def _not_image_reason(rel: str) -> str:
    ext = posixpath.splitext(rel)[1]
    return f"not an image file (extension {ext!r})" if ext else "not an image file (no extension)"


def folder_inputs(files: dict[str, str]) -> Inputs:
    """``{relative path: uri}`` of ``<sample>/**/<image>`` -> :class:`Inputs`."""
    rows, rejected = [], []
    for rel, uri in sorted(files.items()):
        sample, _, cell = rel.partition("/")
        if not cell:
            rejected.append(("", rel, uri, "file outside a sample folder"))
        elif not _is_image(rel):
            rejected.append((sample, cell, uri, _not_image_reason(rel)))
        else:
            rows.append((sample, cell, uri))
    return _finish("folder", rows, rejected)


def _voc_place(rel: str) -> tuple[str, str]:
    """(sample_id, cell stem) of an image or XML at ``rel`` under the input (module docs)."""
    parts = rel.split("/")
    stem = posixpath.splitext(parts[-1])[0]
    if len(parts) == 1 or (len(parts) == 2 and parts[0] in ("JPEGImages", "Annotations")):
        return stem, stem
    inner = [p for p in parts[1:-1] if p not in ("JPEGImages", "Annotations")]
    return parts[0], "/".join([*inner, stem])


def _xml_candidates(rel: str) -> list[str]:
    folder, name = posixpath.split(rel)
    stem = posixpath.splitext(name)[0]
    out = [posixpath.join(folder, f"{stem}.xml")]
    if posixpath.basename(folder) == "JPEGImages":
        out.insert(0, posixpath.join(posixpath.dirname(folder), "Annotations", f"{stem}.xml"))
    return out


def parse_voc(data: bytes) -> list[tuple[float, float, float, float]]:
    """The ``WBC`` boxes of a Pascal-VOC annotation; ValueError when it is malformed."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ValueError(f"malformed annotation XML: {e}") from e
    if root.tag != "annotation":
        raise ValueError(f"malformed annotation XML: root element <{root.tag}>, "
                         "expected <annotation>")
    boxes = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip().upper() != VOC_CELL_NAME:
            continue
        box = obj.find("bndbox")
        try:
            boxes.append(tuple(float(box.findtext(k)) for k in BOX_COLUMNS))
        except (AttributeError, TypeError, ValueError):
            raise ValueError("malformed annotation XML: a WBC object without a numeric "
                             "<bndbox> xmin/ymin/xmax/ymax") from None
    return boxes


def voc_inputs(fs, files: dict[str, str]) -> Inputs:
    """Fields + Pascal-VOC XML -> one record per WBC box (module docs)."""
    xmls = {rel for rel in files if rel.lower().endswith(".xml")}
    images = sorted(rel for rel in files if _is_image(rel))
    xml_of = {img: next((x for x in _xml_candidates(img) if x in xmls), None) for img in images}
    wanted = sorted({x for x in xml_of.values() if x})
    fetched = _fetch(fs, [storage.filesystem(files[x])[1] for x in wanted])
    content = dict(zip(wanted, fetched, strict=True))
    rows, rejected = [], []
    for img in images:
        sample, stem = _voc_place(img)
        uri, xml = files[img], xml_of[img]
        if xml is None:
            rejected.append((sample, stem, uri, "no Pascal-VOC annotation (looked for "
                             f"{' or '.join(_xml_candidates(img))})"))
            continue
        try:
            if isinstance(content[xml], Exception):
                raise ValueError(f"unreadable annotation {xml}: {content[xml]}")
            boxes = parse_voc(content[xml])
        except ValueError as e:
            rejected.append((sample, stem, uri, f"{e} ({xml})"))
            continue
        if not boxes:
            rejected.append((sample, stem, uri, f"annotation has no {VOC_CELL_NAME} box ({xml})"))
        rows.extend((sample, f"{stem}#{k}", uri, *b) for k, b in enumerate(boxes))
    used = set(xml_of.values())
    for rel in sorted(set(files) - set(images)):
        if rel in xmls and rel not in used:
            rejected.append((*_voc_place(rel), files[rel], "annotation without an image"))
        elif rel not in xmls:
            rejected.append((*_voc_place(rel), files[rel], _not_image_reason(rel)))
    return _finish("voc", rows, rejected)


def _fetch(fs, paths: list[str]) -> list[bytes | Exception]:
    """Many small files at once (fsspec fetches concurrently on object stores)."""
    if not paths:
        return []
    got = fs.cat(paths, on_error="return")
    return [got.get(p, FileNotFoundError(p)) for p in paths]


def manifest_inputs(uri: str) -> Inputs:
    """A manifest of ``uri``, ``sample_id`` [, ``cell_id``, boxes] -> :class:`Inputs`."""
    df = read_table(uri)
    missing = [c for c in ("uri", "sample_id") if c not in df.columns]
    if missing:
        raise ValueError(f"{uri}: a scoring manifest needs columns {missing} "
                         f"(has {list(df.columns)})")
    base = manifest_base(uri)
    boxes = (df[list(BOX_COLUMNS)].apply(pd.to_numeric, errors="coerce")
             if set(BOX_COLUMNS) <= set(df.columns) else None)
    rows, rejected = [], []
    for i, rec in enumerate(df.to_dict("records")):
        raw = "" if pd.isna(rec["uri"]) else str(rec["uri"])
        full = resolve(base, raw)
        box = tuple(boxes.iloc[i]) if boxes is not None else (float("nan"),) * 4
        cell = rec.get("cell_id")
        if cell is None or pd.isna(cell) or str(cell) == "":
            boxed = not any(pd.isna(v) for v in box)
            cell = f"{raw}#{','.join(format(v, 'g') for v in box)}" if boxed else raw
        sample = "" if pd.isna(rec["sample_id"]) else str(rec["sample_id"])
        if not raw:
            rejected.append((sample, str(cell) or f"row {i}", full, "empty uri"))
        else:
            rows.append((sample, str(cell), full, *box))
    return _finish("manifest", rows, rejected)


def _finish(kind: str, rows: list[tuple], rejected: list[tuple]) -> Inputs:
    # Parquet strings are UTF-8: names with undecodable bytes are reported, not scored.
    rejected = [tuple(printable(str(v)) for v in r) for r in rejected]
    bad_names = [undecodable(*r[:3]) for r in rows]
    rejected += [(*(printable(v) for v in r[:3]), NOT_UTF8)
                 for r, bad in zip(rows, bad_names, strict=True) if bad]
    rows = [r for r, bad in zip(rows, bad_names, strict=True) if not bad]
    rec = pd.DataFrame([r + (float("nan"),) * (len(RECORD_COLUMNS) - len(r)) for r in rows],
                       columns=list(RECORD_COLUMNS))
    rec = rec.astype({c: "float64" for c in BOX_COLUMNS})
    rej = pd.DataFrame(rejected, columns=list(REJECT_COLUMNS))
    # Unsafe sample ids: the whole row moves to the rejected table with the reason.
    problems = rec["sample_id"].map(sample_id_problem)
    bad = problems.notna()
    if bad.any():
        moved = rec.loc[bad, [*KEY, "uri"]].assign(reason=problems[bad])
        rej = pd.concat([rej, moved], ignore_index=True)
        rec = rec.loc[~bad]
    n = len(rec) + len(rej)
    both = pd.concat([rec.assign(_rec=True), rej.assign(_rec=False)], ignore_index=True)
    both = both.drop_duplicates(KEY, keep="first")
    duplicates = n - len(both)
    if duplicates:
        log.warning("%d input rows repeat an earlier (sample_id, cell_id); kept the first",
                    duplicates)
    rec = both.loc[both["_rec"], list(RECORD_COLUMNS)]
    rej = both.loc[~both["_rec"], list(REJECT_COLUMNS)]
    rec = rec.sort_values(KEY, kind="stable").reset_index(drop=True)
    rej = rej.sort_values(KEY, kind="stable").reset_index(drop=True)
    return Inputs(kind, rec, rej, duplicates, frozenset(rec["sample_id"]) | frozenset(
        s for s in rej["sample_id"] if s and sample_id_problem(s) is None))
