"""Leakage audit: which test/val images have a near-copy in train?

The Kaggle set is ~36 augmented copies (small-angle rotations, flips, shifts) of each of
~348 originals, so a random split puts copies of one cell on both sides. Filenames do not
reveal this; pixels do. The audit fingerprints every image, finds all pairs closer than a
threshold, and reports per split pair how many images have a near-copy on the other side,
plus the near-duplicate groups (connected components of near-copies).

Why not a plain perceptual hash: measured on the full Kaggle set, a 64-bit pHash/dHash of
the centre crop, matched over all 8 flips/90-degree rotations, cannot separate copies from
other cells (at a threshold that finds only 16-41 % of the copies in the paper split's test
set, it already flags 3-17 % of the official TEST set, which shares no original with
TRAIN): arbitrary-angle rotations and shifts scramble its low-frequency bits. The fingerprint
here is built to be invariant to exactly those augmentations:

- *shift*: sampled around the stained nucleus (blue minus red), the one landmark that
  moves rigidly with the cell; the image centre when nothing is stained;
- *rotation by any angle and flips*: luminance and stain are sampled on rings around that
  anchor and only the magnitudes of each ring's angular Fourier series are kept (a rotation
  shifts a ring's phase, a flip conjugates it; neither changes a magnitude).

It fails where the nucleus is cut by the image border (the anchor moves); with ~25 copies
per original in train, another copy usually still matches. Distance is the Euclidean
distance of centred, unit-norm fingerprints (0 = identical, 2 = opposite); nearest-neighbour
search is a chunked matrix product, so 12.5k x 12.5k takes seconds.

The fingerprint functions are pure (arrays in, arrays out); Ray only appears in
:func:`compute_fingerprints` to fan out decoding over a cluster.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from wbc_ray import storage
from wbc_ray.data.decode import BadImage, decode_resize

# Tuned on the full Kaggle set (see module docstring / report): copies of one original are
# mostly below 0.22; different originals start to chain together above ~0.27.
NEAR_COPY_THRESHOLD = 0.22
LEAKY_FRACTION = 0.05  # a split pair is "leaky" when more than 5 % of its images have a copy
SPLIT_PAIRS = (("test", "train"), ("val", "train"), ("test", "val"))
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class FingerprintSpec:
    side: int = 60  # images are downscaled so that their short side has this many pixels
    rings: int = 20  # concentric sampling rings around the anchor
    radius: float = 0.33  # outermost ring, as a fraction of the short side
    angles: int = 64  # samples per ring; a multiple of 4 makes rot90 and flips exact
    harmonics: int = 6  # Fourier magnitudes kept per ring (0 = ring mean)
    stain_floor: float = 20.0  # blue - red above this (0-255) counts as nuclear stain

    @property
    def dim(self) -> int:
        return 2 * self.rings * self.harmonics


DEFAULT_SPEC = FingerprintSpec()


def _downscale(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if min(h, w) == side:
        return rgb
    scale = side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def stain_anchor(rgb: np.ndarray, stain_floor: float = DEFAULT_SPEC.stain_floor):
    """(row, col) centroid of the nuclear stain (blue minus red), or the image centre."""
    a = rgb.astype(np.float32)
    weight = np.clip(a[..., 2] - a[..., 0] - stain_floor, 0, None)
    total = float(weight.sum())
    if total < 1.0:
        return (a.shape[0] - 1) / 2, (a.shape[1] - 1) / 2
    rows, cols = np.indices(weight.shape)
    return float((rows * weight).sum() / total), float((cols * weight).sum() / total)


def fingerprint(rgb: np.ndarray, spec: FingerprintSpec = DEFAULT_SPEC) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (spec.dim,) centred, unit-norm fingerprint.

    Invariant to flips and 90-degree rotations (exactly, up to resampling), to rotations
    by any angle and to shifts (approximately, as long as the nucleus stays in view).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"fingerprint needs an RGB (H, W, 3) array, got shape {rgb.shape}")
    a = _downscale(np.ascontiguousarray(rgb, dtype=np.uint8), spec.side).astype(np.float32)
    cy, cx = stain_anchor(a, spec.stain_floor)
    radii = np.linspace(0.0, spec.radius * min(a.shape[:2]), spec.rings + 1)[1:]
    theta = 2 * np.pi * np.arange(spec.angles) / spec.angles
    coords = [cy + radii[:, None] * np.sin(theta), cx + radii[:, None] * np.cos(theta)]
    feats = []
    for channel in (a @ _LUMA, a[..., 2] - a[..., 0]):  # luminance, stain
        rings = ndimage.map_coordinates(channel, coords, order=1, mode="nearest")
        spectrum = np.abs(np.fft.rfft(rings, axis=1)[:, : spec.harmonics]) / spec.angles
        feats.append(np.log1p(spectrum).ravel())
    v = np.concatenate(feats)
    v = v - v.mean()
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def fingerprint_bytes(data: bytes, spec: FingerprintSpec = DEFAULT_SPEC) -> np.ndarray:
    """Encoded image -> fingerprint; JPEGs decode straight at low resolution (PIL draft)."""
    try:
        w, h = Image.open(io.BytesIO(data)).size  # header only
    except Exception:
        w = h = spec.side  # not an image: decode_resize below raises BadImage with the reason
    scale = spec.side / min(w, h)
    rgb = decode_resize(data, (max(1, round(w * scale)), max(1, round(h * scale))))
    return fingerprint(rgb, spec)


def fingerprint_batch(batch: dict[str, np.ndarray],
                      spec: FingerprintSpec = DEFAULT_SPEC) -> dict[str, np.ndarray]:
    """``{"uri": ...}`` -> adds ``fingerprint`` (N, dim) and ``error`` ("" when fine).

    A Ray Data batch function; unreadable images get a NaN row and the reason.
    """
    out = np.full((len(batch["uri"]), spec.dim), np.nan, np.float32)
    errors = []
    for i, uri in enumerate(batch["uri"]):
        try:
            out[i] = fingerprint_bytes(storage.read_bytes(str(uri)), spec)
            errors.append("")
        except (BadImage, OSError) as e:
            errors.append(f"{type(e).__name__}: {e}")
    return {**batch, "fingerprint": out, "error": np.array(errors, dtype=object)}


def compute_fingerprints(uris: list[str] | pd.Series, *, engine: str = "auto",
                         spec: FingerprintSpec = DEFAULT_SPEC,
                         batch_size: int = 256) -> tuple[np.ndarray, list[str]]:
    """Fingerprint every URI -> ((N, dim) float32 with NaN rows for failures, errors).

    ``engine``: ``"local"`` (this process, ~1 ms per 320x240 JPEG), ``"ray"`` (Ray Data
    ``map_batches``, for large or remote sets) or ``"auto"``: Ray when a session is up,
    ``RAY_ADDRESS`` names a cluster, or there are >= 20,000 images. (On 2 cores Ray's start-up
    does not pay off: 12.5k Kaggle images take 12 s locally, 25 s through a fresh local Ray.)
    """
    uris = [str(u) for u in uris]
    if engine not in ("auto", "local", "ray"):
        raise ValueError(f"unknown engine {engine!r}; choose auto, local or ray")
    if engine == "auto":
        import ray

        big = len(uris) >= 20_000 or bool(os.environ.get("RAY_ADDRESS"))
        engine = "ray" if ray.is_initialized() or big else "local"
    if engine == "local" or not uris:
        res = fingerprint_batch({"uri": np.array(uris, dtype=object)}, spec)
        return res["fingerprint"], list(res["error"])
    return _fingerprints_ray(uris, spec, batch_size)


def _fingerprints_ray(uris: list[str], spec: FingerprintSpec,
                      batch_size: int) -> tuple[np.ndarray, list[str]]:
    import ray.data

    table = pd.DataFrame({"uri": uris, "row": np.arange(len(uris))})
    # One block per batch, so map_batches can spread the decoding over every CPU.
    blocks = [table.iloc[s:s + batch_size] for s in range(0, len(table), batch_size)]
    ds = ray.data.from_pandas(blocks).map_batches(
        fingerprint_batch, fn_kwargs={"spec": spec}, batch_size=batch_size,
        batch_format="numpy")
    fps = np.full((len(uris), spec.dim), np.nan, np.float32)
    errors = [""] * len(uris)
    for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        rows = batch["row"].astype(int)  # Ray Data may reorder blocks; rows put them back
        fps[rows] = np.stack(batch["fingerprint"])
        for r, e in zip(rows, batch["error"], strict=True):
            errors[r] = str(e)
    return fps, errors


def near_pairs(fps: np.ndarray, threshold: float = NEAR_COPY_THRESHOLD,
               chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with distance <= threshold -> (i, j, distance); NaN rows never match.

    Distance is ``sqrt(2 - 2 <f_i, f_j>)`` of unit fingerprints, a chunked matrix product.
    """
    ok = ~np.isnan(fps).any(axis=1)
    x = np.where(ok[:, None], fps, 0).astype(np.float32)
    min_dot = 1.0 - threshold**2 / 2.0
    chunk = max(1, min(chunk, 50_000_000 // max(1, len(x))))  # <= ~200 MB per block
    found_i, found_j, found_d = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0)]
    for start in range(0, len(x), chunk):
        dots = x[start:start + chunk] @ x[start:].T  # only the upper triangle from start
        rows, cols = np.nonzero(dots >= min_dot)
        i, j = rows + start, cols + start
        keep = (i < j) & ok[i] & ok[j]
        found_i.append(i[keep])
        found_j.append(j[keep])
        found_d.append(np.sqrt(np.clip(2 - 2 * dots[rows[keep], cols[keep]], 0, None)))
    return (np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64),
            np.concatenate(found_d).astype(np.float32))


def near_duplicate_groups(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the near-copy graph -> a group id per image (0..k-1)."""
    graph = coo_matrix((np.ones(len(i), bool), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


@dataclass(frozen=True)
class SplitLeak:
    split: str  # the split whose images are checked ("test")
    against: str  # the split searched for near-copies ("train")
    n_images: int  # images in ``split`` (with a readable fingerprint)
    n_with_copy: int  # of those, how many have a near-copy in ``against``
    fraction: float | None  # n_with_copy / n_images; None when ``split`` is empty
    leaky: bool  # fraction > the report's leaky_fraction
    examples: tuple[tuple[str, str, float], ...] = ()  # (path, nearest copy, distance)


@dataclass(frozen=True)
class AuditReport:
    threshold: float  # near-copy distance threshold used
    leaky_fraction: float  # fraction above which a split pair is leaky
    pairs: tuple[SplitLeak, ...]  # one per split pair present
    images: pd.DataFrame  # path, split, label, dup_group, dup_group_size (+ group if given)
    unreadable: tuple[tuple[str, str], ...]  # (uri, reason)
    group_agreement: dict | None  # near-dup groups vs the records' ``group`` column
    timings: dict = field(default_factory=dict)  # seconds: fingerprint, search

    @property
    def leaky(self) -> bool:
        return any(p.leaky for p in self.pairs)

    def groups(self) -> pd.DataFrame:
        """Near-duplicate groups of 2+ images: size, images per split, labels."""
        img = self.images[self.images["dup_group_size"] > 1]
        if img.empty:
            return pd.DataFrame(columns=["dup_group", "size", "splits", "labels", "cross_split"])
        agg = img.groupby("dup_group").agg(
            size=("path", "size"),
            splits=("split", lambda s: {k: int(v) for k, v in sorted(s.value_counts().items())}),
            labels=("label", lambda s: sorted(s.dropna().astype(str).unique())))
        agg["cross_split"] = agg["splits"].map(len) > 1
        return agg.reset_index().sort_values(["cross_split", "size"], ascending=False)

    def to_dict(self, include_groups: bool = True) -> dict:
        groups = self.groups()
        out = {
            "threshold": self.threshold,
            "leaky_fraction": self.leaky_fraction,
            "leaky": self.leaky,
            "pairs": [_leak_dict(p) for p in self.pairs],
            "n_images": int(len(self.images)),
            "n_groups": int(len(groups)),
            "n_cross_split_groups": int(groups["cross_split"].sum()),
            "n_conflicting_label_groups": int((groups["labels"].map(len) > 1).sum()),
            "group_agreement": self.group_agreement,
            "unreadable": [list(u) for u in self.unreadable],
            "timings": self.timings,
        }
        if include_groups:
            paths = self.images.groupby("dup_group")["path"].apply(list)
            out["groups"] = [
                {"id": int(g.dup_group), "size": int(g.size), "splits": g.splits,
                 "labels": list(g.labels), "paths": list(paths[g.dup_group])}
                for g in groups.itertuples()]
        return out

    def to_markdown(self, max_examples: int = 3) -> str:
        d = self.to_dict(include_groups=False)
        verdict = "LEAKY" if self.leaky else "clean"
        lines = [f"# Leakage audit: {verdict}", "",
                 f"{d['n_images']} images; near-copy = fingerprint distance <= "
                 f"{self.threshold:g}; a split pair is leaky above "
                 f"{self.leaky_fraction:.0%} of its images.", "",
                 "| images in | copy in | images | with a copy | fraction | verdict |",
                 "|---|---|---:|---:|---:|---|"]
        for p in self.pairs:
            frac = "-" if p.fraction is None else f"{p.fraction:.1%}"
            lines.append(f"| {p.split} | {p.against} | {p.n_images} | {p.n_with_copy} | "
                         f"{frac} | {'leaky' if p.leaky else 'ok'} |")
        lines += ["", f"Near-duplicate groups (2+ images): {d['n_groups']}, of which "
                      f"{d['n_cross_split_groups']} span splits and "
                      f"{d['n_conflicting_label_groups']} mix labels."]
        if self.group_agreement:
            ga = self.group_agreement
            lines.append(f"Agreement with the `group` column: adjusted Rand index "
                         f"{ga['adjusted_rand']:.3f}; {ga['groups_joined']} near-duplicate "
                         f"groups join 2+ given groups (copies the grouping does not keep "
                         f"together).")
        for p in self.pairs:
            for path, other, dist in p.examples[:max_examples]:
                lines.append(f"- {p.split} `{path}` ~ {p.against} `{other}` ({dist:.3f})")
        if self.unreadable:
            lines.append(f"\n{len(self.unreadable)} unreadable images were left out, e.g. "
                         f"`{self.unreadable[0][0]}`: {self.unreadable[0][1]}")
        return "\n".join(lines) + "\n"


def _leak_dict(p: SplitLeak) -> dict:
    return {"split": p.split, "against": p.against, "n_images": p.n_images,
            "n_with_copy": p.n_with_copy, "fraction": p.fraction, "leaky": p.leaky,
            "examples": [list(e) for e in p.examples]}


def _split_leak(first: str, second: str, split: np.ndarray, paths: np.ndarray,
                edges: tuple[np.ndarray, np.ndarray, np.ndarray], leaky_fraction: float,
                n_examples: int = 5) -> SplitLeak:
    i, j, d = edges
    # Both directions of each undirected edge: query in ``first``, match in ``second``.
    q = np.concatenate([i, j])
    m = np.concatenate([j, i])
    dd = np.concatenate([d, d])
    sel = (split[q] == first) & (split[m] == second)
    hits = pd.DataFrame({"q": q[sel], "m": m[sel], "d": dd[sel]}).sort_values("d")
    nearest = hits.drop_duplicates("q")
    n = int((split == first).sum())
    frac = None if n == 0 else len(nearest) / n
    examples = tuple((str(paths[r.q]), str(paths[r.m]), round(float(r.d), 4))
                     for r in nearest.head(n_examples).itertuples())
    return SplitLeak(first, second, n, len(nearest), frac,
                     frac is not None and frac > leaky_fraction, examples)


def _group_agreement(given: pd.Series, dup: np.ndarray) -> dict:
    from sklearn.metrics import adjusted_rand_score

    frame = pd.DataFrame({"given": given.astype(str).to_numpy(), "dup": dup})
    per_dup = frame.groupby("dup")["given"].nunique()
    return {"adjusted_rand": float(adjusted_rand_score(frame["given"], frame["dup"])),
            "groups_joined": int((per_dup > 1).sum()),
            "given_groups": int(frame["given"].nunique())}


def audit(records: pd.DataFrame, *, threshold: float = NEAR_COPY_THRESHOLD,
          leaky_fraction: float = LEAKY_FRACTION, fingerprints: np.ndarray | None = None,
          engine: str = "auto", spec: FingerprintSpec = DEFAULT_SPEC) -> AuditReport:
    """Near-copies between splits of ``records`` (needs ``uri`` or ``path``, and ``split``).

    Rows whose split is not train/val/test are ignored. ``fingerprints`` (one row per
    record) skips decoding, e.g. to audit several splits of one image set.
    """
    if "split" not in records:
        raise ValueError("audit needs a 'split' column: run assign_splits(records, mode) first")
    if not 0 < threshold < 2:
        raise ValueError(f"threshold must be in (0, 2), got {threshold}")
    if fingerprints is not None and len(fingerprints) != len(records):
        raise ValueError(f"fingerprints has {len(fingerprints)} rows for {len(records)} records")
    used = records["split"].isin(["train", "val", "test"]).to_numpy()
    rec = records[used].reset_index(drop=True)
    t0 = time.perf_counter()
    if fingerprints is None:
        fps, errors = compute_fingerprints(rec["uri" if "uri" in rec else "path"],
                                           engine=engine, spec=spec)
    else:
        fps = np.asarray(fingerprints, np.float32)[used]
        errors = ["" if np.isfinite(f).all() else "no fingerprint" for f in fps]
    t1 = time.perf_counter()
    edges = near_pairs(fps, threshold)
    dup = near_duplicate_groups(len(rec), edges[0], edges[1])
    t2 = time.perf_counter()
    ok = np.array([not e for e in errors], bool)
    paths = rec["path" if "path" in rec else "uri"].astype(str).to_numpy()
    split = np.where(ok, rec["split"].astype(str).to_numpy(), "")  # unreadable: no split
    present = set(split[ok])
    pairs = tuple(_split_leak(a, b, split, paths, edges, leaky_fraction)
                  for a, b in SPLIT_PAIRS if a in present and b in present)
    images = pd.DataFrame({"path": paths, "split": rec["split"].to_numpy(),
                           "label": rec.get("label"),
                           "dup_group": dup, "dup_group_size": np.bincount(dup)[dup]})
    has_groups = "group" in rec and rec["group"].notna().all() and ok.any()
    if has_groups:
        images["group"] = rec["group"].to_numpy()
    agreement = _group_agreement(rec["group"][ok], dup[ok]) if has_groups else None
    unreadable = tuple((str(u), e) for u, e in zip(paths, errors, strict=True) if e)
    return AuditReport(threshold, leaky_fraction, pairs, images[ok].reset_index(drop=True),
                       unreadable, agreement,
                       {"fingerprint": round(t1 - t0, 2), "search": round(t2 - t1, 2)})
