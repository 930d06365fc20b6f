"""`fair descriptions generate`: ask an LLM the CuPL questions for every class and write the descriptions.

Every answer is appended to a JSONL cache next to the output as soon as it arrives, so an interrupted
or failed run resumes without asking anything twice.
"""
from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fair.descriptions.cupl import now_utc, write_descriptions
from fair.descriptions.llm import ChatClient, GenerateSettings
from fair.descriptions.prompts import SYSTEM_PROMPT, ask, parse_sentences, questions_for
from fair.descriptions.urls import redact_url
from fair.errors import FairError
from fair.io import sha256_json

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def cache_path_for(out: str | Path) -> Path:
    """`descriptions.json` -> `descriptions.cache.jsonl` (the answers of `generate`, next to it)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.cache.jsonl")


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
                client.sleep(client.backoff(bad_rounds - 1))
        sentences += [t for k in keys for t in cache.answers[k]]
    return list(dict.fromkeys(sentences))  # exact repeats dropped, order kept


def generate_descriptions(classnames: list[str], dataset: str, out: str | Path, s: GenerateSettings,
                          questions: list[str] | None = None, allow_partial: bool = False, force: bool = False,
                          progress: bool = True) -> GenerateResult:
    """Ask the endpoint the CuPL questions for every class, then write the descriptions and their sidecar.

    Classes whose answers stay malformed after `max_attempts` are reported (FairError, unless
    `allow_partial`); what was received is in the cache either way, so a rerun asks only for the rest.
    """
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
    ex = ThreadPoolExecutor(max_workers=workers)
    try:
        for f in as_completed([ex.submit(fn, it) for it in items]):
            f.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
