"""`fair descriptions import`: read a CuPL file (path or URL) and re-key it to a dataset's class names.

Keys are matched exactly, then ignoring case, accents and punctuation, then by a unique close match;
what matched how, and what did not, is reported and recorded in the sidecar.
"""
from __future__ import annotations

import difflib
import logging
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fair.descriptions.cupl import now_utc, parse_cupl, write_descriptions
from fair.descriptions.urls import is_url, redact_url, requests_module
from fair.errors import FairError
from fair.io import sha256_bytes

log = logging.getLogger(__name__)


def _raw_github(url: str) -> str:
    """github.com/<o>/<r>/blob/<ref>/<path> (an HTML page) -> its raw.githubusercontent.com file."""
    m = re.match(r"^https?://github\.com/([^/]+)/([^/]+)/blob/(.+)$", url)
    return f"https://raw.githubusercontent.com/{m[1]}/{m[2]}/{m[3]}" if m else url


def read_source(src: str, timeout_s: float = 60.0) -> bytes:
    """The bytes of a local file or an http(s) URL; a one-line FairError when it cannot be had."""
    if is_url(src):
        requests = requests_module()
        url = _raw_github(src)
        try:
            r = requests.get(url, timeout=timeout_s)
        except requests.RequestException as e:
            raise FairError(f"cannot download {redact_url(url)} ({type(e).__name__}); check the URL, or "
                            f"download the file and pass its path") from None
        if r.status_code != 200:
            raise FairError(f"{redact_url(url)} answered HTTP {r.status_code}; check the URL, or download "
                            f"the file and pass its path")
        return r.content
    p = Path(src).expanduser()
    try:
        return p.read_bytes()
    except OSError as e:
        raise FairError(f"cannot read {src!r} ({e.strerror or type(e).__name__}); pass a CuPL JSON file "
                        f"or its URL") from None


def norm_key(name: str) -> str:
    """Case, accents, underscores and punctuation ignored: "Black_footed Albatross" -> "black footed albatross"."""
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", s).split())


@dataclass
class MatchReport:
    """How the source keys were matched to the class names."""
    exact: list[str] = field(default_factory=list)                       # classes
    normalized: list[tuple[str, str]] = field(default_factory=list)      # (class, source key)
    fuzzy: list[tuple[str, str, float]] = field(default_factory=list)    # (class, source key, similarity)
    ambiguous: list[tuple[str, list[str]]] = field(default_factory=list)  # (class, candidate keys)
    missing: list[str] = field(default_factory=list)                     # classes without descriptions
    unused_keys: list[str] = field(default_factory=list)                 # source keys matched to nothing
    merged: list[tuple[str, str]] = field(default_factory=list)          # (class, another key naming it), joined
    repeated_keys: list[str] = field(default_factory=list)               # keys the source names twice, joined

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": {"exact": len(self.exact), "normalized": len(self.normalized),
                                           "fuzzy": len(self.fuzzy), "missing": len(self.missing),
                                           "unused_keys": len(self.unused_keys), "merged": len(self.merged),
                                           "repeated_keys": len(self.repeated_keys)}}


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def _fuzzy_pairs(classes: list[str], keys: list[str], cutoff: float, report: MatchReport) -> dict[str, str]:
    """Class -> key for each class with exactly one key at `cutoff` or above that no other class also wants."""
    normed = {k: norm_key(k) for k in keys}
    cands: dict[str, list[tuple[str, float]]] = {}
    for c in classes:
        nc = norm_key(c)
        scored = [(k, _similarity(nc, nk)) for k, nk in normed.items()
                  if difflib.SequenceMatcher(None, nc, nk).real_quick_ratio() >= cutoff]
        cands[c] = [(k, r) for k, r in scored if r >= cutoff]
    wanted: dict[str, int] = {}
    for cs in cands.values():
        for k, _ in cs:
            wanted[k] = wanted.get(k, 0) + 1
    pairs = {}
    for c, cs in cands.items():
        if len(cs) == 1 and wanted[cs[0][0]] == 1:
            pairs[c] = cs[0][0]
            report.fuzzy.append((c, cs[0][0], round(cs[0][1], 3)))
        elif cs:
            report.ambiguous.append((c, sorted(k for k, _ in cs)))
    return pairs


def rekey(data: dict[str, list[str]], classnames: list[str], cutoff: float = 0.8
          ) -> tuple[dict[str, list[str]], MatchReport]:
    """Re-key a CuPL dict to `classnames`: exact, then normalised (norm_key), then a unique close match.

    Every class appears in the result, in class order; a class without a match gets `[]`. A class that
    several source keys name (`Red_Square` and `red square`) gets their sentences joined, in file order
    of the keys after the matched one, and `report.merged` says so.
    """
    report = MatchReport()
    unused = dict.fromkeys(data)            # ordered set of source keys still free
    match: dict[str, str] = {}
    for c in classnames:
        if c in unused:
            match[c] = c
            report.exact.append(c)
            del unused[c]
    by_norm: dict[str, list[str]] = {}
    for k in unused:
        by_norm.setdefault(norm_key(k), []).append(k)
    for c in classnames:
        ks = by_norm.get(norm_key(c)) if c not in match else None
        if ks:
            k = ks.pop(0)
            match[c] = k
            report.normalized.append((c, k))
            del unused[k]
    also: dict[str, list[str]] = {}
    for c in match:                         # other spellings of a matched class: the same class named twice
        for k in by_norm.get(norm_key(c), []):
            if k in unused:
                also.setdefault(c, []).append(k)
                report.merged.append((c, k))
                del unused[k]
    rest = [c for c in classnames if c not in match]
    if rest and unused and cutoff < 1.0:
        for c, k in _fuzzy_pairs(rest, list(unused), cutoff, report).items():
            match[c] = k
            del unused[k]
    out = {c: [s for k in [match[c], *also.get(c, [])] for s in data[k]] if c in match else []
           for c in classnames}
    report.missing = [c for c in classnames if not out[c]]
    report.unused_keys = list(unused)
    return out, report


def import_descriptions(src: str, classnames: list[str], out: str | Path, dataset: str,
                        cutoff: float = 0.8, force: bool = False) -> tuple[dict, MatchReport]:
    """Read a CuPL file (path or URL), re-key it to `classnames`, write it and its sidecar.

    Returns (sidecar metadata, report). Nothing is written when no source key matches any class.
    """
    raw = read_source(src)
    label = redact_url(src) if is_url(src) else repr(str(src))
    cupl = parse_cupl(raw, label)
    data = cupl.sentences
    rekeyed, report = rekey(data, classnames, cutoff)
    report.repeated_keys = cupl.repeated
    if cupl.repeated:
        log.warning("%s names %d keys more than once (%s): their sentences are merged into one list", label,
                    len(cupl.repeated), cupl.repeated_text())
    if report.merged:
        log.warning("%s names %d classes by more than one key (%s): their sentences are merged into one list",
                    label, len(report.merged), ", ".join(f"{c!r} <- {k!r}" for c, k in report.merged[:5]))
    if len(report.missing) == len(classnames):
        example = f" (e.g. source {next(iter(data))!r} vs class {classnames[0]!r})"
        raise FairError(f"none of the {len(data)} keys of {label} matches a class of {dataset}{example}; "
                        f"is it the file for another dataset?")
    source = redact_url(src) if is_url(src) else str(Path(src).expanduser().resolve())
    meta = {"kind": "import", "dataset": dataset, "source": source, "source_sha256": sha256_bytes(raw),
            "date": now_utc(), "classes": len(classnames),
            "sentences": sum(len(v) for v in rekeyed.values()), "matching": report.to_dict()}
    return write_descriptions(out, rekeyed, meta, force), report


def format_report(report: MatchReport, n_classes: int) -> list[str]:
    """The matching report as lines for the terminal."""
    def names(xs, n=10):
        return ", ".join(repr(x) for x in xs[:n]) + (f" and {len(xs) - n} more" if len(xs) > n else "")
    lines = [f"  matched exactly: {len(report.exact)}, ignoring case/punctuation: {len(report.normalized)}, "
             f"by close match: {len(report.fuzzy)} (of {n_classes} classes)"]
    lines += [f"    close match: {c!r} <- {k!r} ({r:.2f})" for c, k, r in report.fuzzy]
    lines += [f"    ambiguous, left unmatched: {c!r} ~ {names(ks, 4)}" for c, ks in report.ambiguous]
    if report.missing:
        lines.append(f"  classes with no descriptions ({len(report.missing)}): {names(report.missing)}; a run "
                     f"needs them added or data.description_fallback=true")
    else:
        lines.append("  every class has descriptions")
    if report.unused_keys:
        lines.append(f"  source keys that matched nothing ({len(report.unused_keys)}): {names(report.unused_keys)}")
    if report.repeated_keys:
        lines.append(f"  source keys named more than once, their sentences merged ({len(report.repeated_keys)}): "
                     f"{names(report.repeated_keys)}")
    if report.merged:
        lines.append(f"  classes named by several source keys, their sentences merged ({len(report.merged)}): "
                     + ", ".join(f"{c!r} <- {k!r}" for c, k in report.merged[:10]))
    return lines
