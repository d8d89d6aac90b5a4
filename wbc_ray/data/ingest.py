"""The one ingest path: list files or read a manifest, with one record schema.

Labelled training sets (``data/sources.py``) and scoring archives (``scoring/inputs.py``)
are both listed here: one recursive listing (:func:`list_files`), one manifest reader
(:func:`read_table`, :func:`resolve`), one record schema (:data:`RECORD_COLUMNS`) and one
rule for file names that Parquet cannot hold (:func:`undecodable`, :func:`printable`).
Every input ends up either in the records or among the rejected with its reason.
"""

from __future__ import annotations

import posixpath

import pandas as pd

from wbc_ray import storage
from wbc_ray.schema import BOX_COLUMNS, KEY

# One row per input. Training uses label/folder_split/group; scoring uses the KEY; both uri.
RECORD_COLUMNS = ("uri", "path", "label", "folder_split", "group", *KEY, *BOX_COLUMNS)
SCORE_COLUMNS = (*KEY, "uri", *BOX_COLUMNS)  # what a scoring run carries per cell
REJECT_COLUMNS = (*KEY, "uri", "reason")
NOT_UTF8 = "file name is not valid UTF-8 (shown with \\x escapes)"


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith((".csv", ".parquet", ".pq"))


def read_table(uri: str) -> pd.DataFrame:
    """A manifest or groups table (CSV or Parquet); id columns stay strings."""
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        if uri.lower().endswith(".csv"):
            return pd.read_csv(f, dtype={"sample_id": str, "cell_id": str, "group": str})
        return pd.read_parquet(f)


def manifest_base(uri: str) -> str:
    """The folder relative ``uri`` values in a manifest resolve against."""
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def resolve(base: str, uri: str) -> str:
    """``uri`` from a manifest row: absolute and remote URIs as they are, others under base."""
    if not uri or storage.is_remote(uri) or uri.startswith("/"):
        return uri
    return storage.join(base, uri)


def list_files(uri: str, exclude: str | None = None) -> tuple[str, dict[str, tuple[str, int]]]:
    """``(root URI, {relative path: (uri, size)})`` of every file under ``uri``, one listing.

    Relative paths use ``/`` between folders; any other character of a name is kept as it is
    (a backslash inside a folder name stays a backslash, so checks see the real name).
    ``exclude``: a prefix to skip (an output folder inside the input).
    """
    fs, root = storage.filesystem(uri)
    if hasattr(fs, "invalidate_cache"):  # a long-lived process must see new files
        fs.invalidate_cache(root)
    skip = storage.filesystem(exclude)[1].rstrip("/") + "/" if exclude else None
    files = {}
    for path, info in fs.find(root, withdirs=False, detail=True).items():
        if skip and (path + "/").startswith(skip):
            continue
        files[posixpath.relpath(path, root)] = (storage.uri_of(fs, path),
                                               int(info.get("size") or 0))
    return storage.uri_of(fs, root), files


def undecodable(*texts: str) -> bool:
    """True when a name holds bytes that are not UTF-8 (Python's surrogate escapes)."""
    try:
        for t in texts:
            t.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def printable(text: str) -> str:
    """The real name with undecodable bytes as ``\\xNN`` escapes: valid UTF-8, one-to-one."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def numeric_boxes(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the box columns present and float (NaN = the whole image)."""
    for c in BOX_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64") if c in df else float(
            "nan")
    return df
