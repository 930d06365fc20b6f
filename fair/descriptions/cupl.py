"""The descriptions file: CuPL JSON `{class name: [sentence, ...]}`, parsed in one place, and its sidecar.

Every reader (a run's `load_descriptions`, torch-free so that a sweep's driver checks files without it, `fair descriptions import` and `show`) parses with
`parse_cupl`, so a file means the same to all of them. A file that names a key twice is never read
silently (JSON would keep only the last list): a run refuses it, import merges the lists with a warning,
show flags it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from fair.descriptions.classnames import match_classes
from fair.errors import FairError
from fair.io import atomic_write_text, sha256_bytes

log = logging.getLogger(__name__)
SHAPE = '{"class": ["sentence", ...]}'


def sidecar_path(out: str | Path) -> Path:
    """`descriptions.json` -> `descriptions.meta.json` (next to it)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.meta.json")


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_descriptions(out: str | Path, data: dict[str, list[str]], meta: dict, force: bool = False) -> dict:
    """Write `data` as CuPL JSON and its sidecar; return the sidecar with `sha256` (of the file's bytes).

    An existing file with other content is replaced only with `force` (it may be a curated file).
    """
    out = Path(out).expanduser()
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    sha = sha256_bytes(text.encode())
    if out.is_file() and not force and sha256_bytes(out.read_bytes()) != sha:
        raise FairError(f"{str(out)!r} already exists with other descriptions; pass --force to replace it "
                        f"or --out to write elsewhere")
    meta = {**meta, "sha256": sha, "file": out.name}
    atomic_write_text(out, text)
    atomic_write_text(sidecar_path(out), json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    log.info("wrote %s (sha256 %s) and %s", out, sha[:12], sidecar_path(out).name)
    return meta


class _Pairs(list):
    """A JSON object as its (key, value) pairs in file order, so that a repeated key is seen."""


@dataclass
class CuplFile:
    """A parsed descriptions file: sentences by key, in file order, and the keys it names more than once.

    JSON itself keeps only the last value of a repeated key; here the lists of a repeated key are joined
    in file order and the key is listed in `repeated`, for the reader to refuse, warn or flag.
    """
    sentences: dict[str, list[str]]
    repeated: list[str] = field(default_factory=list)

    def repeated_text(self, n: int = 5) -> str:
        """The repeated keys for a message: "'a', 'b' and 3 more"."""
        return ", ".join(f"{k!r}" for k in self.repeated[:n]) + \
            (f" and {len(self.repeated) - n} more" if len(self.repeated) > n else "")


def parse_cupl(raw: bytes, label: str) -> CuplFile:
    """Parse CuPL JSON `{class: [sentences]}`; a one-line FairError (naming `label`) when it is not one.

    A lone string counts as one sentence; sentences are stripped and blanks dropped.
    """
    try:
        data = json.loads(raw, object_pairs_hook=_Pairs)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        hint = (" (it looks like an HTML page: use the raw file's URL)" if raw.lstrip()[:1] == b"<"
                else f" ({getattr(e, 'msg', type(e).__name__)})")
        raise FairError(f"{label} is not valid JSON{hint}; expected a CuPL object {SHAPE}") from None
    if not isinstance(data, _Pairs) or not data:
        raise FairError(f"{label} is empty or not a JSON object; expected a CuPL object {SHAPE}")
    out: dict[str, list[str]] = {}
    repeated: dict[str, None] = {}
    for key, sents in data:
        if isinstance(sents, str):
            sents = [sents]
        if not isinstance(sents, list) or isinstance(sents, _Pairs) or not all(isinstance(s, str) for s in sents):
            raise FairError(f"{label}: the value of {key!r} is not a list of sentences (strings)")
        if key in out:
            repeated[key] = None
        out.setdefault(key, []).extend(s.strip() for s in sents if s.strip())
    return CuplFile(out, list(repeated))


def read_descriptions_file(path: str | Path) -> CuplFile:
    """`parse_cupl` of a local file; a one-line error when it is missing."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FairError(f"descriptions file {str(p)!r} not found")
    return parse_cupl(p.read_bytes(), repr(str(p)))


@dataclass
class Descriptions:
    """Per-class description sentences, in class order, and what fell back to templates."""
    per_class: list[list[str]]
    sha256: str | None
    fallback_classes: list[str] = field(default_factory=list)


def load_descriptions(path: str | Path | None, classnames: list[str], fallback: bool) -> Descriptions:
    """Read a CuPL JSON `{class: [sentences]}` for `classnames`.

    A class with no sentences is an error naming it, unless `fallback` — then its list is empty (the
    anchors use its templates) and it is recorded in `fallback_classes`. With no file at all and
    `fallback`, every class falls back. A file that names one of the classes more than once (the same key
    twice, or two spellings such as "red square" and "Red_Square") is refused: which list was meant is
    unknown. Keys are matched as `fair.descriptions.classnames.match_classes` says.
    """
    if path is None:
        if not fallback:
            raise FairError("no descriptions file for this dataset; pass data.descriptions=PATH (CuPL JSON) "
                            "or set data.description_fallback=true to use templates only")
        return Descriptions([[] for _ in classnames], None, list(classnames))
    p = Path(path).expanduser()
    if not p.is_file():
        raise FairError(f"descriptions file {str(p)!r} not found; fix data.descriptions")
    raw = p.read_bytes()
    label = f"descriptions file {str(p)!r}"
    cupl = parse_cupl(raw, label)
    keys, several = match_classes(list(cupl.sentences), classnames)
    used = set(keys.values())
    twice = [repr(k) for k in cupl.repeated if k in used] + \
        [f"{c!r} as {' and '.join(map(repr, ks))}" for c, ks in several.items()]
    if twice:   # JSON keeps the last list of a repeated key without a word; which one was meant is unknown
        named = twice
        shown = ", ".join(map(str, named[:5])) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
        raise FairError(f"{label} names {len(named)} classes more than once ({shown}); merge each into one list, "
                        f"or re-import it with `fair descriptions import FILE --dataset NAME` (which merges them)")
    per_class = [cupl.sentences[keys[c]] if keys[c] else [] for c in classnames]
    missing = [c for c, sents in zip(classnames, per_class) if not sents]
    if missing and not fallback:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FairError(f"classes without descriptions in {str(p)!r}: {shown}; add them or set "
                        f"data.description_fallback=true")
    if missing:
        log.warning("%d classes have no description and fall back to templates: %s", len(missing), missing[:5])
    return Descriptions(per_class, sha256_bytes(raw), missing)
