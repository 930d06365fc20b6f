"""Class descriptions for a dataset: import a CuPL file, generate one with an LLM, lint one.

A descriptions file is CuPL JSON `{class name: [sentence, ...]}` keyed by the catalog's class names. It
goes to `<dataset folder>/descriptions.json` by default, where `fair.data.prepare_data` finds it when
`data.descriptions` is unset; a sidecar `descriptions.meta.json` says where it came from (source or
model, questions, date) and holds its sha256, the same hash a run records as `descriptions_sha256`.

`generate` asks any OpenAI-compatible chat-completions endpoint (POST `{base_url}/chat/completions`)
CuPL-style questions per class. Every answer is appended to a JSONL cache next to the output as soon as
it arrives, so an interrupted or failed run resumes without asking anything twice.
"""
from __future__ import annotations

import difflib
import email.utils
import ipaddress
import json
import logging
import random
import re
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from fair.errors import FairError
from fair.io import atomic_write_text, sha256_bytes, sha256_json

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DEFAULT_BASE_URL = "https://api.openai.com/v1"
SHORT_WORDS = 4  # `show` flags sentences with fewer words than this

# CuPL-style questions per catalog dataset. `{a}` is the class name with its article ("an abyssinian"),
# `{c}` the bare name. After CuPL (Pratt et al., ICCV 2023): the ImageNet list is the one of its
# generate_image_prompts.py, the others follow the per-dataset lists of its appendix; resisc45 and
# fashion_mnist have no CuPL list and use ours, modelled on the EuroSAT and generic ones.
GENERIC_QUESTIONS = [
    "Describe what {a} looks like",
    "How can you identify {a}?",
    "What does {a} look like?",
    "Describe an image from the internet of {a}",
    "A caption of an image of {a}:",
]
_BIRD_QUESTIONS = [
    "Describe what {a}, a species of bird, looks like",
    "What does {a} look like",
    "Visually describe {a}, a type of bird",
    "A caption of an image of {a}, a type of bird",
    "Describe the appearance of {a}",
    "What are the prominent features to identify {a} bird",
]
_FASHION_QUESTIONS = [
    "Describe what {a}, a type of clothing, looks like",
    "What does {a} look like in a small grayscale photo?",
    "How can you identify {a} in a photo?",
]
QUESTIONS: dict[str, list[str]] = {
    "imagenet": GENERIC_QUESTIONS,
    "imagefolder": GENERIC_QUESTIONS,
    "caltech101": ["Describe what {a} looks like", "What does {a} look like", "Describe a photo of {a}"],
    "dtd": ["What does {a} material look like?", "What does {a} surface look like?",
            "What does {a} texture look like?", "What does {a} object look like?",
            "What does {a} thing look like?", "What does {a} pattern look like?"],
    "eurosat": ["Describe an aerial satellite view of {a}", "How does a satellite photo of {a} look like",
                "Visually describe a centered satellite view of {a}"],
    "flowers102": ["What does {a} flower look like", "Describe the appearance of {a}",
                   "A caption of an image of {a}", "Visually describe {a}, a type of flower"],
    "food101": ["Describe what {a} looks like", "Visually describe {a}",
                "How can you tell that the food in this photo is {a}?"],
    "oxford_pets": ["Describe what {a} pet looks like", "Visually describe {a}, a type of pet"],
    "stanford_cars": ["How can you identify {a}", "Description of {a}, a type of car",
                      "A caption of a photo of {a}:", "What are the primary characteristics of {a}?",
                      "Description of the exterior of {a}",
                      "What are the identifying characteristics of {a}, a type of car?",
                      "Describe an image from the internet of {a}", "What does {a} look like?",
                      "Describe what {a}, a type of car, looks like"],
    "sun397": ["Describe what {a} looks like", "How can you identify {a}?", "Describe a photo of {a}"],
    "ucf101": ["What does a person doing {c} look like", "Describe the process of {c}", "How does a person {c}"],
    "fgvc_aircraft": ["Describe {a} aircraft", "Describe the {c} aircraft"],
    "cub200": _BIRD_QUESTIONS,
    "birdsnap": _BIRD_QUESTIONS,
    "resisc45": ["Describe a satellite photo of {a}", "Describe an aerial photo of {a}",
                 "How can you identify {a} in a satellite image?", "Visually describe {a} as seen from above"],
    "fashion_mnist": _FASHION_QUESTIONS,
    "fashion_mnist_shifted": _FASHION_QUESTIONS,
}
SYSTEM_PROMPT = ("You write short visual descriptions of categories for an image classifier. Answer with "
                 "one or two short, factual sentences about what it looks like, as a JSON list of strings, "
                 "and nothing else.")


# ------------------------------------------------------------------------------------------ files


def sidecar_path(out: str | Path) -> Path:
    """`descriptions.json` -> `descriptions.meta.json` (next to it)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.meta.json")


def cache_path_for(out: str | Path) -> Path:
    """`descriptions.json` -> `descriptions.cache.jsonl` (the answers of `generate`, next to it)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.cache.jsonl")


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


def read_classnames(path: str | Path) -> list[str]:
    """A class list: a JSON list of names, or one name a line (blank lines and `#` comments skipped)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FairError(f"cannot read the class list {str(p)!r} ({type(e).__name__}); pass a text file with "
                        f"one class name a line") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError:
            raise FairError(f"class list {str(p)!r} starts like JSON but is not valid JSON") from None
        if not all(isinstance(n, str) for n in names):
            raise FairError(f"class list {str(p)!r} must be a JSON list of strings")
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise FairError(f"class list {str(p)!r} is empty")
    return [n.strip() for n in names]


def dataset_classnames(dataset: str, root: str | None, classes_file: str | None = None) -> tuple[list[str], Path]:
    """The catalog's class names for `dataset` (from its files under `root`, or `classes_file`) and its folder."""
    from fair.data.catalog import check_dataset, dataset_base, get_spec
    spec = get_spec(dataset)
    if classes_file:
        return read_classnames(classes_file), dataset_base(spec, root)
    base = check_dataset(dataset, root)
    raw = spec.reader(spec, base)
    return list(raw.classnames), base


def default_descriptions_path(dataset: str, root: str | None) -> Path | None:
    """The file a run of `dataset` would use with data.descriptions unset (see fair.data)."""
    from fair.data import default_descriptions
    from fair.data.catalog import dataset_base, get_spec
    spec = get_spec(dataset)
    return default_descriptions(spec, dataset_base(spec, root))


# ------------------------------------------------------------------------------------------ import


def _requests():
    try:
        import requests
    except ModuleNotFoundError:
        raise FairError("this command needs the requests package: pip install requests") from None
    return requests


def redact_url(url: str) -> str:
    """A URL without credentials or query string (safe to print and to record)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _is_url(src: str) -> bool:
    return re.match(r"^https?://", src, re.IGNORECASE) is not None


def _raw_github(url: str) -> str:
    """github.com/<o>/<r>/blob/<ref>/<path> (an HTML page) -> its raw.githubusercontent.com file."""
    m = re.match(r"^https?://github\.com/([^/]+)/([^/]+)/blob/(.+)$", url)
    return f"https://raw.githubusercontent.com/{m[1]}/{m[2]}/{m[3]}" if m else url


def read_source(src: str, timeout_s: float = 60.0) -> bytes:
    """The bytes of a local file or an http(s) URL; a one-line FairError when it cannot be had."""
    if _is_url(src):
        requests = _requests()
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


def parse_cupl(raw: bytes, label: str) -> dict[str, list[str]]:
    """Parse CuPL JSON `{class: [sentences]}` (a lone string counts as one sentence); blanks dropped."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        hint = (" (it looks like an HTML page: use the raw file's URL)" if raw.lstrip()[:1] == b"<"
                else f" ({getattr(e, 'msg', type(e).__name__)})")
        raise FairError(f"{label} is not JSON{hint}; expected a CuPL object {{\"class\": [\"sentence\", ...]}}") \
            from None
    if not isinstance(data, dict) or not data:
        raise FairError(f"{label} is empty or not a JSON object; expected a CuPL object "
                        f"{{\"class\": [\"sentence\", ...]}}")
    out = {}
    for key, sents in data.items():
        if isinstance(sents, str):
            sents = [sents]
        if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
            raise FairError(f"{label}: the value of {key!r} is not a list of sentences (strings)")
        out[str(key)] = [s.strip() for s in sents if s.strip()]
    return out


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

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": {"exact": len(self.exact), "normalized": len(self.normalized),
                                           "fuzzy": len(self.fuzzy), "missing": len(self.missing),
                                           "unused_keys": len(self.unused_keys)}}


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

    Every class appears in the result, in class order; a class without a match gets `[]`.
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
            k = ks.pop(0)  # a second key with the same normalised name stays unused and is reported
            match[c] = k
            report.normalized.append((c, k))
            del unused[k]
    rest = [c for c in classnames if c not in match]
    if rest and unused and cutoff < 1.0:
        for c, k in _fuzzy_pairs(rest, list(unused), cutoff, report).items():
            match[c] = k
            del unused[k]
    out = {c: list(data[match[c]]) if c in match else [] for c in classnames}
    report.missing = [c for c in classnames if not out[c]]
    report.unused_keys = list(unused)
    return out, report


def import_descriptions(src: str, classnames: list[str], out: str | Path, dataset: str,
                        cutoff: float = 0.8, force: bool = False) -> tuple[dict, MatchReport]:
    """Read a CuPL file (path or URL), re-key it to `classnames`, write it and its sidecar.

    Returns (sidecar metadata, report). Nothing is written when no source key matches any class.
    """
    raw = read_source(src)
    label = redact_url(src) if _is_url(src) else repr(str(src))
    data = parse_cupl(raw, label)
    rekeyed, report = rekey(data, classnames, cutoff)
    if len(report.missing) == len(classnames):
        example = f" (e.g. source {next(iter(data))!r} vs class {classnames[0]!r})"
        raise FairError(f"none of the {len(data)} keys of {label} matches a class of {dataset}{example}; "
                        f"is it the file for another dataset?")
    source = redact_url(src) if _is_url(src) else str(Path(src).expanduser().resolve())
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
    return lines


# ------------------------------------------------------------------------------------------ generate


def with_article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def questions_for(dataset: str) -> list[str]:
    """The CuPL-style question templates for a catalog dataset (the generic list for others)."""
    return list(QUESTIONS.get(dataset, GENERIC_QUESTIONS))


def ask(question: str, classname: str) -> str:
    """A question template filled in for one class."""
    return question.format(a=with_article(classname), c=classname)


_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|\(\d+\))\s+")


def _clean_sentence(s: str) -> str:
    s = " ".join(_BULLET.sub("", s).split()).strip().strip('"').strip()
    return s if not s or s[-1] in ".!?" else s + "."


def parse_sentences(text: str | None) -> list[str]:
    """An answer as sentences: a JSON list of strings, or one sentence a line. ValueError if it is neither.

    A JSON object with one list of strings (`{"sentences": [...]}`) counts as that list; Markdown code
    fences, bullets and numbering are stripped; a preamble line ending in ':' is dropped. Text that starts
    like JSON but does not parse (e.g. cut off by max_tokens), or has no words at all, is not an answer.
    """
    t = (text or "").strip()
    fence = re.match(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", t, re.DOTALL)
    if fence:
        t = fence[1].strip()
    if t[:1] in "[{" and t:
        try:
            data = json.loads(t)
        except json.JSONDecodeError:
            raise ValueError("starts like JSON but is not valid JSON (cut off?)") from None
        if isinstance(data, dict) and len(data) == 1:
            data = next(iter(data.values()))
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise ValueError("JSON that is not a list of strings")
        sents = [_clean_sentence(s) for s in data]
    else:
        lines = [ln for ln in t.splitlines() if ln.strip() and not ln.strip().endswith(":")]
        sents = [_clean_sentence(ln) for ln in lines]
    sents = [s for s in sents if re.search(r"[A-Za-z]{2,}", s)]
    if not sents:
        raise ValueError("no sentences in the answer")
    return sents


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class GenerateSettings:
    """How `generate` asks: the endpoint, the model and the sampling (all recorded in the sidecar, the key never)."""
    model: str
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    n_per_question: int = 10          # samples per question (the request's `n`; CuPL: 10)
    temperature: float = 0.99         # CuPL's
    max_tokens: int = 120
    max_attempts: int = 4             # per question of a class, for answers that are not sentences
    max_retries: int = 6              # per request, for 429/5xx/connection errors
    backoff_s: float = 1.0            # first wait; doubles each retry (with jitter), capped
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0
    concurrency: int = 1              # classes asked at the same time


class ChatClient:
    """A minimal OpenAI-compatible chat-completions client with retries (requests, no SDK)."""

    def __init__(self, s: GenerateSettings, sleep=time.sleep):
        self.s = s
        self.url = s.base_url.rstrip("/") + "/chat/completions"
        self.shown = redact_url(self.url)
        self.sleep = sleep
        self.requests = _requests()
        self._local = threading.local()
        self._lock = threading.Lock()
        self.n_requests = 0

    def _session(self):
        if not hasattr(self._local, "session"):
            self._local.session = self.requests.Session()
        return self._local.session

    def _wait(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), 300.0)
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(retry_after)
                    return min(max((when - datetime.now(timezone.utc)).total_seconds(), 0.0), 300.0)
                except (TypeError, ValueError):
                    pass
        base = min(self.s.max_backoff_s, self.s.backoff_s * 2 ** attempt)
        return base * (0.5 + random.random() / 2)

    def complete(self, messages: list[dict], n: int) -> list[str]:
        """The texts of the `n` choices (an endpoint may return fewer). FairError on refusal or when unreachable."""
        body = {"model": self.s.model, "messages": messages, "n": n, "temperature": self.s.temperature,
                "max_tokens": self.s.max_tokens}
        headers = {"Authorization": f"Bearer {self.s.api_key}"} if self.s.api_key else {}
        last = ""
        for attempt in range(self.s.max_retries + 1):
            try:
                with self._lock:
                    self.n_requests += 1
                r = self._session().post(self.url, json=body, headers=headers, timeout=self.s.timeout_s)
            except self.requests.RequestException as e:
                last = f"unreachable ({type(e).__name__})"
                if attempt < self.s.max_retries:
                    self.sleep(self._wait(attempt))
                continue
            if r.status_code in (401, 403):
                raise FairError(f"{self.shown} refused the request (HTTP {r.status_code}): the API key is wrong "
                                f"or lacks access to model {self.s.model!r}")
            if r.status_code == 429 or r.status_code >= 500:
                last = f"answered HTTP {r.status_code}"
                if attempt < self.s.max_retries:
                    wait = self._wait(attempt, r.headers.get("Retry-After"))
                    log.debug("%s %s; retrying in %.1f s", self.shown, last, wait)
                    self.sleep(wait)
                continue
            if r.status_code != 200:
                hint = " (does --base-url end in /v1?)" if r.status_code == 404 else ""
                raise FairError(f"{self.shown} answered HTTP {r.status_code}{hint}: {_error_message(r)}")
            try:
                choices = r.json()["choices"]
                return [(c.get("message") or {}).get("content") or "" for c in choices]
            except (ValueError, KeyError, TypeError, AttributeError):
                raise FairError(f"{self.shown} did not answer like an OpenAI-compatible chat-completions "
                                f"endpoint (no 'choices' in its JSON); check --base-url") from None
        hint = ("is the server running and the --base-url right?" if last.startswith("unreachable")
                else "the endpoint is rate-limited or failing; try again later or lower --concurrency")
        raise FairError(f"{self.shown} {last} after {self.s.max_retries + 1} tries; {hint}")


def _error_message(r) -> str:
    try:
        err = r.json().get("error")
        msg = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        msg = None
    msg = " ".join(str(msg or r.text or "").split())
    return (msg[:200] + "...") if len(msg) > 200 else (msg or "no message")


class AnswerCache:
    """Answers already received, one JSON line each, keyed by model + question + class + sample index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.answers: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        if self.path.is_file():
            with open(self.path, "rb+") as fh:  # a line cut by a kill mid-write must not swallow the next one
                if fh.seek(0, 2):
                    fh.seek(-1, 2)
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")
            bad = 0
            for ln in self.path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(ln)
                    self.answers[rec["key"]] = list(rec["sentences"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad += 1  # a line cut by an interruption: that answer is asked again
            if bad:
                log.warning("%s: %d unreadable lines skipped", self.path, bad)
            log.info("cache %s: %d answers", self.path, len(self.answers))

    @staticmethod
    def key(model: str, question: str, classname: str, sample: int) -> str:
        return sha256_json([CACHE_VERSION, SYSTEM_PROMPT, model, question, classname, sample])

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def __len__(self) -> int:
        return len(self.answers)

    def put(self, key: str, record: dict, sentences: list[str]) -> None:
        """Remember an answer and append it to the file at once (flushed)."""
        line = json.dumps({"key": key, **record, "sentences": sentences}, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
            self.answers[key] = sentences


class _Counts:
    """Counters shared by the threads of one `generate`."""

    def __init__(self):
        self.malformed = self.cached = 0
        self._lock = threading.Lock()

    def add(self, name: str, k: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + k)


class _ClassFailed(Exception):
    def __init__(self, classname: str, question: str, reason: str, answer: str):
        super().__init__(classname)
        self.classname, self.question, self.reason, self.answer = classname, question, reason, answer


@dataclass
class GenerateResult:
    meta: dict | None                  # the sidecar, None when nothing was written
    failed: dict[str, str]             # class -> why no usable answer came
    malformed: int                     # answers that were not sentences (each asked again)
    requests: int                      # HTTP requests made in this run
    cached: int                        # answers reused from the cache


def _ask_class(classname: str, questions: list[str], s: GenerateSettings, client: ChatClient,
               cache: AnswerCache, counts: _Counts) -> list[str]:
    """All sentences of one class, asking only for samples the cache does not have."""
    sentences = []
    for q in questions:
        keys = [cache.key(s.model, q, classname, i) for i in range(s.n_per_question)]
        missing = [i for i, k in enumerate(keys) if k not in cache]
        counts.add("cached", s.n_per_question - len(missing))
        bad_rounds, last_bad, why = 0, "", ""
        while missing:
            messages = [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": ask(q, classname)}]
            answers = client.complete(messages, n=len(missing))
            got_bad = not answers
            for i, text in zip(list(missing), answers):
                try:
                    sents = parse_sentences(text)
                except ValueError as e:
                    got_bad, last_bad, why = True, text or "", str(e)
                    counts.add("malformed")
                    continue
                cache.put(keys[i], {"model": s.model, "class": classname, "question": q, "sample": i}, sents)
                missing.remove(i)
            if got_bad and missing:
                bad_rounds += 1
                if bad_rounds >= s.max_attempts:
                    raise _ClassFailed(classname, q, why or "no choices in the answer", last_bad)
                log.debug("%r: an answer was not a list of sentences (%s); asking again", classname, why)
                client.sleep(client._wait(bad_rounds - 1))
        sentences += [t for k in keys for t in cache.answers[k]]
    return list(dict.fromkeys(sentences))  # exact repeats dropped, order kept


def check_endpoint(s: GenerateSettings, key_env: str) -> None:
    """One-line errors for a missing model or API key (a loopback server such as vLLM needs no key)."""
    if not s.model:
        raise FairError("no --model given; name the model the endpoint serves, e.g. gpt-4o-mini")
    if not re.match(r"^https?://[^/]", s.base_url):
        raise FairError(f"--base-url {redact_url(s.base_url)!r} is not an http(s) URL, e.g. https://api.openai.com/v1")
    if not s.api_key and not is_loopback(s.base_url):
        raise FairError(f"no API key: set ${key_env} (or --api-key-env NAME) for {redact_url(s.base_url)}")


def generate_descriptions(classnames: list[str], dataset: str, out: str | Path, s: GenerateSettings,
                          questions: list[str] | None = None, allow_partial: bool = False, force: bool = False,
                          progress: bool = True) -> GenerateResult:
    """Ask the endpoint the CuPL questions for every class, then write the descriptions and their sidecar.

    Classes whose answers stay malformed after `max_attempts` are reported (FairError, unless
    `allow_partial`); what was received is in the cache either way, so a rerun asks only for the rest.
    """
    from tqdm import tqdm
    questions = questions or questions_for(dataset)
    out = Path(out).expanduser()
    cache = AnswerCache(cache_path_for(out))
    client = ChatClient(s)
    counts = _Counts()
    results: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(classnames), desc=f"{dataset} descriptions", unit="class", disable=not progress or None,
               dynamic_ncols=True)

    def one(c: str) -> None:
        try:
            results[c] = _ask_class(c, questions, s, client, cache, counts)
        except _ClassFailed as e:
            failed[c] = f"{e.reason} ({e.question!r}; last answer: {e.answer[:80]!r})"
            log.warning("class %r: no usable answer after %d tries: %s", c, s.max_attempts, failed[c])
        bar.update(1)

    try:
        if s.concurrency <= 1:
            for c in classnames:
                one(c)
        else:
            _run_threads(one, classnames, s.concurrency)
    except FairError as e:
        raise FairError(f"{e}; {len(cache)} answers so far are cached in {cache.path} and a rerun asks only "
                        f"for the rest") from None
    finally:
        bar.close()
    result = GenerateResult(None, failed, counts.malformed, client.n_requests, counts.cached)
    if failed and not allow_partial:
        shown = ", ".join(repr(c) for c in list(failed)[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise FairError(f"{len(failed)} classes got no answer that is a list of sentences after {s.max_attempts} "
                        f"tries: {shown}; rerun to ask again (the other answers are cached in {cache.path}), "
                        f"or pass --allow-partial")
    data = {c: results.get(c, []) for c in classnames}
    meta = {"kind": "generate", "dataset": dataset, "model": s.model, "base_url": redact_url(s.base_url),
            "questions": questions, "system_prompt": SYSTEM_PROMPT, "n_per_question": s.n_per_question,
            "temperature": s.temperature, "max_tokens": s.max_tokens, "date": now_utc(),
            "classes": len(classnames), "sentences": sum(len(v) for v in data.values()),
            "failed_classes": failed, "cache": cache.path.name}
    result.meta = write_descriptions(out, data, meta, force)
    return result


def _run_threads(fn, items: list, workers: int) -> None:
    """fn(item) for every item on `workers` threads; the first FairError stops the rest."""
    from concurrent.futures import ThreadPoolExecutor, as_completed
    ex = ThreadPoolExecutor(max_workers=workers)
    try:
        for f in as_completed([ex.submit(fn, it) for it in items]):
            f.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------ show


@dataclass
class Lint:
    """What `show` reports about a descriptions file."""
    counts: list[tuple[str, int]]                  # (class, sentences), in class order
    empty: list[str]                               # classes with none
    duplicates: dict[str, int]                     # class -> sentences repeated within it
    shared: list[tuple[str, list[str]]]            # (sentence, classes that all have it)
    short: list[tuple[str, str]]                   # (class, sentence) with fewer than SHORT_WORDS words
    not_in_dataset: list[str] = field(default_factory=list)  # file keys that match no class


def read_descriptions_file(path: str | Path) -> dict[str, list[str]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FairError(f"descriptions file {str(p)!r} not found")
    return parse_cupl(p.read_bytes(), repr(str(p)))


def lint_descriptions(data: dict[str, list[str]], classnames: list[str] | None = None) -> Lint:
    """Count the sentences per class and flag empty classes, repeats, shared and very short sentences.

    With `classnames`, classes are matched as a run matches them (exactly, then ignoring case/underscores).
    """
    if classnames is not None:
        norm = {k.lower().replace("_", " ").strip(): k for k in data}
        keys = {c: (c if c in data else norm.get(c.lower().replace("_", " ").strip())) for c in classnames}
        per_class = {c: data[k] if k else [] for c, k in keys.items()}
        used = set(keys.values())
        extra = [k for k in data if k not in used]
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
    return Lint(counts, [c for c, n in counts if n == 0], dup, shared, short, extra)


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
    if lint.not_in_dataset:
        flags.append(f"keys that match no class of the dataset ({len(lint.not_in_dataset)}): "
                     + ", ".join(map(repr, lint.not_in_dataset[:10])))
    lines += [f"  flag: {f}" for f in flags] or ["  no flags"]
    return lines
