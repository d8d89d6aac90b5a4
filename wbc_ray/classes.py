"""Canonical white-blood-cell class names and the normalisation of user spellings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PAPER_CLASSES: tuple[str, ...] = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
LISC_CLASSES: tuple[str, ...] = ("BASOPHIL", *PAPER_CLASSES)

# Prefixes people and datasets actually use ("eosi", "lympho", "mono", "neutro", "baso").
# A prefix of at least 3 letters of a canonical name is accepted; these aliases add the rest.
_ALIASES = {
    "EOS": "EOSINOPHIL",
    "LYM": "LYMPHOCYTE",
    "MON": "MONOCYTE",
    "NEU": "NEUTROPHIL",
    "BAS": "BASOPHIL",
    "PMN": "NEUTROPHIL",
}
CLASS_SETS: dict[str, tuple[str, ...]] = {"paper": PAPER_CLASSES, "lisc": LISC_CLASSES}


def normalise_class(name: str, classes: Sequence[str] = LISC_CLASSES) -> str | None:
    """Map a spelling such as ``eosinophil``, ``Eosinophils`` or ``eosi`` to its canonical name.

    Returns None when the name is not one of ``classes`` (an unknown class folder).
    """
    key = "".join(ch for ch in str(name).upper() if ch.isalpha())
    if len(key) < 3:
        return None
    if key.endswith("S") and key[:-1] in classes:
        key = key[:-1]
    if key in classes:
        return key
    alias = _ALIASES.get(key)
    if alias in classes:
        return alias
    matches = [c for c in classes if c.startswith(key) or key.startswith(c)]
    return matches[0] if len(matches) == 1 else None


def resolve_classes(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``"paper"`` / ``"lisc"`` / ``"A,B,C"`` / an iterable -> a tuple of canonical names."""
    if isinstance(spec, str):
        if spec.lower() in CLASS_SETS:
            return CLASS_SETS[spec.lower()]
        spec = [s for s in spec.split(",") if s.strip()]
    out = []
    for raw in spec:
        canon = normalise_class(raw.strip()) or raw.strip().upper()
        if canon in out:
            raise ValueError(f"class {raw!r} is listed twice")
        out.append(canon)
    if len(out) < 2:
        raise ValueError(f"need at least two classes, got {out!r}")
    return tuple(out)
