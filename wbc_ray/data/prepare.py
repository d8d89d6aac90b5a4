"""DataConfig -> train/val/test Ray Datasets of decoded images, plus the accounting."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import ray

from wbc_ray.classes import resolve_classes
from wbc_ray.config import DataConfig
from wbc_ray.data.audit import compute_fingerprints, near_duplicate_groups, near_pairs
from wbc_ray.data.dataset import from_cache_or_decode, split_errors
from wbc_ray.data.sources import Listing, attach_groups, find_groups_file, list_inputs
from wbc_ray.data.splits import assign_splits

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
NEAR_DUPLICATES = "near-duplicates"  # DataConfig.groups: group by near-identical images


@dataclass(frozen=True)
class PreparedData:
    classes: tuple[str, ...]
    datasets: dict[str, ray.data.Dataset]  # split -> rows with `image` (uint8 HWC), `label`
    records: pd.DataFrame  # every listed record with its `split`
    quarantine: pd.DataFrame  # uri, reason: everything that could not be used
    counts: dict[str, int]  # seen / used / quarantined / unused and per split
    fingerprint: str


def list_labelled(cfg: DataConfig) -> tuple[tuple[str, ...], Listing]:
    """List the data, attach groups when known, and apply ``limit_per_class``."""
    if not cfg.data:
        raise ValueError("no data given: pass --data URI (or run `wbc-ray demo`)")
    classes = resolve_classes(cfg.classes)
    listing = list_inputs(cfg.data, classes)
    groups = cfg.groups or find_groups_file(cfg.data)
    if groups == NEAR_DUPLICATES:
        listing = near_duplicate_listing(listing)
    elif groups:
        listing = attach_groups(listing, groups, cfg.group_column)
    if listing.records["label"].isna().any():
        raise ValueError(f"{cfg.data}: training and evaluation need a label for every image")
    if cfg.limit_per_class:
        rec = listing.records
        keep = rec.groupby("label", group_keys=False).apply(
            lambda g: g.sample(min(len(g), cfg.limit_per_class), random_state=cfg.seed))
        listing = Listing(rec.loc[sorted(keep.index)].reset_index(drop=True), listing.rejected,
                          listing.root)
    return classes, listing


def split_records(cfg: DataConfig, listing: Listing):
    """The listing's records with the ``split`` column ``cfg`` asks for (see ``splits``)."""
    return assign_splits(listing.records, cfg.split, tuple(cfg.fractions), cfg.seed,
                         folds=cfg.folds, fold=cfg.fold)


def near_duplicate_listing(listing: Listing) -> Listing:
    """``listing`` with a ``group`` per image: connected sets of near-identical images (the
    audit's rotation/flip-invariant fingerprints) share one; every other image is its own.
    For sets without patient or slide ids (LISC crops: one photo can yield several crops)."""
    rec = listing.records.copy()
    fps, errors = compute_fingerprints(rec["uri"])
    bad = [(u, e) for u, e in zip(rec["uri"], errors, strict=True) if e]
    if bad:
        raise ValueError(f"near-duplicate groups: {len(bad)} images could not be "
                         f"fingerprinted, e.g. {bad[0][0]}: {bad[0][1]}")
    i, j, _ = near_pairs(fps)
    rec["group"] = [f"dup-{g}" for g in near_duplicate_groups(len(rec), i, j)]
    log.info("near-duplicate groups: %d images in %d groups", len(rec), rec["group"].nunique())
    return Listing(rec, listing.rejected, listing.root)


def prepare(cfg: DataConfig, size: int, preprocess: dict | None = None) -> PreparedData:
    """List, split, decode once (or read the cache), and separate bad inputs.

    ``preprocess``: the run's (or checkpoint's) preprocessing spec, applied at decode time.
    """
    classes, listing = list_labelled(cfg)
    records = split_records(cfg, listing)
    records["label_idx"] = records["label"].map({c: i for i, c in enumerate(classes)})
    fold = f"-fold{cfg.fold}of{cfg.folds}" if cfg.folds else ""
    fingerprint = f"{listing.fingerprint()}-{cfg.split}-{cfg.seed}{fold}"
    # Decoding does not depend on the split: the cache serves every split mode and seed.
    # Rows are shuffled once (fixed seed) so that no block holds a single class: listings
    # come sorted by folder, and training only reshuffles blocks plus a local buffer.
    shuffled = records.drop(columns="split").sample(frac=1.0, random_state=0)
    decoded = from_cache_or_decode(shuffled, size, cfg.max_pixels, cfg.cache,
                                   listing.fingerprint(), preprocess)
    good, bad = split_errors(decoded)
    quarantine = pd.concat([listing.rejected, bad], ignore_index=True)
    split_of = ray.put(dict(zip(records["uri"], records["split"], strict=True)))
    datasets = {s: good.map_batches(_take_split, fn_kwargs={"split_of": split_of, "split": s},
                                    batch_format="pandas").materialize()
                for s in SPLITS}
    used = records[records["split"].notna()]
    bad_uris = set(bad["uri"])
    counts = {"seen": listing.seen, "quarantined": len(quarantine),
              "unused": int((records["split"].isna() & ~records["uri"].isin(bad_uris)).sum())}
    per_split = used.loc[~used["uri"].isin(bad_uris)].groupby("split").size()
    counts.update({s: int(per_split.get(s, 0)) for s in SPLITS})
    counts["used"] = sum(counts[s] for s in SPLITS)
    if (preprocess or {}).get("locate"):  # classified from the whole image, never dropped
        counts["not_located"] = int(good.filter(expr="located == False").count())
    if counts["used"] + counts["quarantined"] + counts["unused"] != counts["seen"]:
        raise RuntimeError(f"input accounting does not reconcile: {counts}")
    if len(quarantine):
        log.warning("%d inputs quarantined (e.g. %s: %s)", len(quarantine),
                    quarantine["uri"].iloc[0], quarantine["reason"].iloc[0])
    return PreparedData(classes, datasets, records, quarantine, counts, fingerprint)


def _take_split(batch: pd.DataFrame, split_of, split: str) -> pd.DataFrame:
    mapping = ray.get(split_of) if isinstance(split_of, ray.ObjectRef) else split_of
    keep = batch["uri"].map(mapping) == split
    return batch.loc[keep, ["image", "label_idx"]]
