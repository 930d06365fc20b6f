"""`fair descriptions show`: sentences per class, and what looks wrong in a descriptions file."""
from __future__ import annotations

from dataclasses import dataclass, field

from fair.descriptions.classnames import match_classes
from fair.descriptions.cupl import CuplFile

SHORT_WORDS = 4  # `show` flags sentences with fewer words than this


@dataclass
class Lint:
    """What `show` reports about a descriptions file."""
    counts: list[tuple[str, int]]                  # (class, sentences), in class order
    empty: list[str]                               # classes with none
    duplicates: dict[str, int]                     # class -> sentences repeated within it
    shared: list[tuple[str, list[str]]]            # (sentence, classes that all have it)
    short: list[tuple[str, str]]                   # (class, sentence) with fewer than SHORT_WORDS words
    not_in_dataset: list[str] = field(default_factory=list)  # file keys that match no class
    named_twice: list[str] = field(default_factory=list)     # keys (or classes) the file names more than once


def lint_descriptions(cupl: CuplFile, classnames: list[str] | None = None) -> Lint:
    """Count the sentences per class and flag empty classes, repeats, shared and very short sentences.

    With `classnames`, classes are matched as a run matches them (`match_classes`), and keys that match
    no class and classes that several keys name are flagged too. A key the file names twice is flagged
    (its sentences are counted together); a run refuses such a file.
    """
    data = cupl.sentences
    named_twice = list(cupl.repeated)
    if classnames is not None:
        keys, several = match_classes(list(data), classnames)
        per_class = {c: data[k] if k else [] for c, k in keys.items()}
        used = set(keys.values()) | {k for ks in several.values() for k in ks}
        extra = [k for k in data if k not in used]
        named_twice += [c for c in several if c not in named_twice]
    else:
        per_class, extra = dict(data), []
    counts = [(c, len(v)) for c, v in per_class.items()]
    dup, owners, short = {}, {}, []
    for c, sents in per_class.items():
        seen = [" ".join(s.lower().split()) for s in sents]
        if len(set(seen)) < len(seen):
            dup[c] = len(seen) - len(set(seen))
        for s in set(seen):
            owners.setdefault(s, []).append(c)
        short += [(c, s) for s in sents if len(s.split()) < SHORT_WORDS]
    shared = sorted(((s, cs) for s, cs in owners.items() if len(cs) > 1), key=lambda x: -len(x[1]))
    return Lint(counts, [c for c, n in counts if n == 0], dup, shared, short, extra, named_twice)


def format_lint(lint: Lint, width: int = 100) -> list[str]:
    """A compact table of sentences per class (several columns) and the flags, as lines."""
    def cell(c, n):
        name = c if len(c) <= 28 else c[:27] + "~"
        return f"{n:4d} {name}{' !' if n == 0 else ''}"
    cells = [cell(c, n) for c, n in lint.counts]
    w = max((len(x) for x in cells), default=10) + 2
    cols = max(1, width // w)
    rows = -(-len(cells) // cols)
    lines = ["".join(cells[r + k * rows].ljust(w) for k in range(cols) if r + k * rows < len(cells)).rstrip()
             for r in range(rows)]
    ns = sorted(n for _, n in lint.counts)
    if ns:
        lines.append(f"{len(ns)} classes, {sum(ns)} sentences (min {ns[0]}, median {ns[len(ns) // 2]}, max {ns[-1]})")
    flags = []
    if lint.empty:
        flags.append(f"classes with no descriptions ({len(lint.empty)}): {', '.join(map(repr, lint.empty[:10]))}")
    if lint.duplicates:
        flags.append(f"classes with repeated sentences ({len(lint.duplicates)}): "
                     + ", ".join(f"{c!r} x{n}" for c, n in list(lint.duplicates.items())[:10]))
    if lint.shared:
        flags.append(f"sentences shared by several classes ({len(lint.shared)}), e.g. "
                     + "; ".join(f"{s[:60]!r} in {len(cs)}" for s, cs in lint.shared[:3]))
    if lint.short:
        flags.append(f"very short sentences (< {SHORT_WORDS} words) ({len(lint.short)}), e.g. "
                     + "; ".join(f"{c!r}: {s!r}" for c, s in lint.short[:3]))
    if lint.named_twice:
        flags.append(f"classes the file names more than once ({len(lint.named_twice)}; a run refuses it): "
                     + ", ".join(map(repr, lint.named_twice[:10])))
    if lint.not_in_dataset:
        flags.append(f"keys that match no class of the dataset ({len(lint.not_in_dataset)}): "
                     + ", ".join(map(repr, lint.not_in_dataset[:10])))
    lines += [f"  flag: {f}" for f in flags] or ["  no flags"]
    return lines
