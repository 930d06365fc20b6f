"""A minimal OpenAI-compatible chat-completions client (POST `{base_url}/chat/completions`) with retries."""
from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from fair.descriptions.urls import is_loopback, redact_url, requests_module
from fair.errors import FairError

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.openai.com/v1"


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
        self.requests = requests_module()
        self._local = threading.local()
        self._lock = threading.Lock()
        self.n_requests = 0

    def _session(self):
        if not hasattr(self._local, "session"):
            self._local.session = self.requests.Session()
        return self._local.session

    def backoff(self, attempt: int, retry_after: str | None = None) -> float:
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
                    self.sleep(self.backoff(attempt))
                continue
            if r.status_code in (401, 403):
                raise FairError(f"{self.shown} refused the request (HTTP {r.status_code}): the API key is wrong "
                                f"or lacks access to model {self.s.model!r}")
            if r.status_code == 429 or r.status_code >= 500:
                last = f"answered HTTP {r.status_code}"
                if attempt < self.s.max_retries:
                    wait = self.backoff(attempt, r.headers.get("Retry-After"))
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


def check_endpoint(s: GenerateSettings, key_env: str) -> None:
    """One-line errors for a missing model or API key (a loopback server such as vLLM needs no key)."""
    if not s.model:
        raise FairError("no --model given; name the model the endpoint serves, e.g. gpt-4o-mini")
    if not re.match(r"^https?://[^/]", s.base_url):
        raise FairError(f"--base-url {redact_url(s.base_url)!r} is not an http(s) URL, e.g. https://api.openai.com/v1")
    if not s.api_key and not is_loopback(s.base_url):
        raise FairError(f"no API key: set ${key_env} (or --api-key-env NAME) for {redact_url(s.base_url)}")
