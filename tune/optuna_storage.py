"""Where a sweep's Optuna studies live, so that `optuna-dashboard` shows them, live and afterwards.

    optuna: {storage: null}                                  # default: a SQLite file the sweep keeps
    optuna: {storage: "postgresql://fair@db.example.com/optuna"}              # password from PGPASSWORD
    optuna: {storage: "mysql+pymysql://fair:${OPTUNA_DB_PASSWORD}@db/optuna"}  # ${VAR} from the environment
    optuna: {storage: /shared/optuna.log}                     # Optuna's journal file (a path ending in .log)

Every study (method x dataset) is `<sweep name>/<method>/<dataset>` in that storage, so several sweeps can
share one database. The default is SQLite (`optuna-dashboard sqlite:///...` reads it directly):

- a local sweep storage: `<storage>/<name>/optuna.db`, the live file beside the Tune experiment;
- an `s3://` sweep storage: a live file on the driver, `~/.cache/fair/optuna/<name>-<hash of the URI>/optuna.db`,
  copied into the experiment (`<storage>/<name>/optuna.db`) with every Tune snapshot of the searcher (the
  searcher writes it into Tune's staging folder, which Tune uploads with its own state). A resume uses the
  driver's file when it holds at least as many trials as the stored copy (the same machine: it is newer),
  else the stored copy (another machine).

A URL never holds a literal password (it would land in sweep.json and in logs): the environment gives it,
either through the database driver's own variable (PGPASSWORD) or `${VAR}` in the URL, expanded only when the
storage is opened. Whatever is printed is scrubbed (`results.errors.scrub`). This module imports optuna only
inside functions: sweep_config checks the value offline with `check_value`.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fair.errors import FairError
from results.errors import scrub

log = logging.getLogger("tune.optuna_storage")
DB_FILE = "optuna.db"          # the default storage's file name, in the experiment folder
CACHE = Path("~/.cache/fair/optuna")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PASSWORD = re.compile(r"://[^/@:]*:([^@/]*)@")      # the password of `scheme://user:password@host`
_ENV_REF = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$")


def study_name(sweep: str, key: str) -> str:
    """The Optuna study name of study `key` (`method/dataset`) of `sweep`."""
    return f"{sweep}/{key}" if sweep else key


def is_journal(value: str) -> bool:
    return not _SCHEME.match(value) and value.endswith(".log")


def check_value(value: Optional[str]) -> None:
    """`optuna.storage` without opening it: null, a database URL without a literal password, or a journal
    file path (.log); a one-line FairError otherwise."""
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise FairError("sweep key 'optuna.storage' must be null (a SQLite file beside the sweep), a database URL "
                        "(postgresql://user@host/db) or a journal file path ending in .log")
    if is_journal(value):
        return
    if not _SCHEME.match(value):
        raise FairError(f"sweep key 'optuna.storage' {scrub(value)!r} is neither a database URL (sqlite:///path.db, "
                        f"postgresql://user@host/db) nor a journal file path ending in .log")
    m = _PASSWORD.search(value)
    if m and not _ENV_REF.match(m.group(1)):
        raise FairError(f"sweep key 'optuna.storage' {scrub(value)!r} holds a password; take it from the "
                        f"environment: ...://user:${{OPTUNA_DB_PASSWORD}}@host/db (or PGPASSWORD for PostgreSQL)")


@dataclass
class StudyStore:
    """An opened Optuna storage of one sweep: `storage` (an optuna BaseStorage), `shown` (what logs and the
    dashboard command may print: scrubbed), `upload` (an s3 sweep: the driver's file to copy into each Tune
    snapshot), `owned` (the default file, the sweep's own)."""
    storage: Any
    shown: str
    owned: bool
    upload: Optional[Path] = None

    def dashboard(self) -> str:
        return f"optuna-dashboard {self.shown}"

    def snapshot(self, folder: str) -> None:
        """Copy the driver's SQLite file into `folder` (Tune's staging folder, uploaded with its state),
        consistently even while it is open (SQLite's backup API), via a temp file and a rename."""
        if self.upload is None:
            return
        tmp = Path(folder, f".{DB_FILE}.tmp")
        src, dst = sqlite3.connect(self.upload), sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        os.replace(tmp, Path(folder, DB_FILE))


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _driver_file(uri: str, sweep: str) -> Path:
    """The driver's live file of an s3 sweep (one folder per sweep URI, so two buckets never share it)."""
    tag = f"{zlib.crc32(uri.encode()) & 0xFFFFFFFF:08x}"
    return CACHE.expanduser() / f"{sweep}-{tag}" / DB_FILE


def _storage_at(url: str) -> Any:
    """The optuna storage at `url`: a journal file path, or a database URL (a SQLite file's folder is made)."""
    import optuna
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.get_storage(url)


def _open(url: str, shown: str) -> Any:
    """`_storage_at(url)`, with one scrubbed line on failure."""
    secret = _PASSWORD.search(url)
    try:
        return _storage_at(url)
    except Exception as e:  # noqa: BLE001 - any driver's error: one line, without the credentials
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = scrub(f"{type(e).__name__}: {first}", (secret.group(1),) if secret else ())
        raise FairError(f"optuna.storage {shown} cannot be opened ({why}); check the URL, that the database is "
                        f"up and reachable, and that its Python driver is installed") from None


def locate(cfg, uri: str) -> tuple[str, str, bool, Optional[Path]]:
    """(url to open, shown, owned, driver file to upload) of a sweep's Optuna storage; no I/O."""
    value = cfg.optuna.storage
    if value is not None:
        url = os.path.expandvars(value)
        if is_journal(url):
            url = str(Path(url).expanduser().resolve())
        return url, scrub(value), False, None
    if uri.startswith("s3://"):
        path = _driver_file(uri, cfg.name)
        return _sqlite_url(path), _sqlite_url(path), True, path
    path = Path(uri, cfg.name, DB_FILE)
    return _sqlite_url(path), _sqlite_url(path), True, None


def check(cfg, uri: str) -> None:
    """Open a named `optuna.storage` before anything starts (a URL Optuna cannot open: one line). The
    default file needs no check beyond the sweep storage's own probe."""
    if cfg.optuna.storage is not None:
        url, shown, _, _ = locate(cfg, uri)
        _open(url, shown)


def _trials_in(path: Path) -> int:
    """Trials in an Optuna SQLite file (-1: none or unreadable)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
            return c.execute("SELECT count(*) FROM trials").fetchone()[0]
    except sqlite3.Error:
        return -1


def _fetch_stored_copy(uri: str, sweep: str, local: Path) -> None:
    """Resuming an s3 sweep: keep the driver's file unless the copy in the experiment holds more trials
    (the sweep last ran on another machine)."""
    from results.store import MissingKey, open_store
    try:
        blob = open_store(uri).get(f"{sweep}/{DB_FILE}")
    except MissingKey:
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=local.parent, suffix=".db", delete=False) as fh:
        fh.write(blob)
    stored = Path(fh.name)
    if _trials_in(stored) > _trials_in(local):
        log.info("Optuna studies of %s: the stored copy is newer than this machine's %s; using it", sweep, local)
        os.replace(stored, local)
    else:
        stored.unlink()


def prepare(cfg, uri: str, resume: bool) -> StudyStore:
    """Open the sweep's Optuna storage for this run. A fresh sweep starts with no studies: the default file
    left by a run that died before Tune's first snapshot is removed, and a named storage that already holds
    this sweep's studies is refused (one line). A resumed s3 sweep gets the newest copy of its file."""
    url, shown, owned, upload = locate(cfg, uri)
    local = Path(url[len("sqlite:///"):]) if owned else None
    if owned and not resume and local.exists():
        log.warning("removing %s: Optuna studies of an earlier start of sweep %s that has no saved state", local,
                    cfg.name)
        local.unlink()
    if owned and resume and upload is not None:
        _fetch_stored_copy(uri, cfg.name, local)
    store = StudyStore(_open(url, shown), shown, owned, upload)
    if not resume and not owned:
        taken = sorted(n for n in _study_names(store.storage) if n.startswith(f"{cfg.name}/"))
        if taken:
            raise FairError(f"optuna.storage {shown} already holds studies of a sweep named {cfg.name!r} "
                            f"({', '.join(taken[:3])}) but the sweep storage has no saved state to resume; "
                            f"use another name (--set name=...) or delete them (optuna delete-study "
                            f"--storage URL --study-name NAME)")
    return store


def _study_names(storage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def load_studies(uri: str, sweep: str, storage: Optional[str] = None) -> dict:
    """{study key (`method/dataset`): optuna.Study} of a sweep, read back from its Optuna storage
    (`storage`: the sweep's `optuna.storage`; None: its default file, from the experiment for s3)."""
    import optuna
    if storage is not None:
        url = os.path.expandvars(storage)
    elif uri.startswith("s3://"):
        from results.store import open_store
        folder = Path(tempfile.mkdtemp(prefix="fair-optuna-"))
        (folder / DB_FILE).write_bytes(open_store(uri).get(f"{sweep}/{DB_FILE}"))
        url = _sqlite_url(folder / DB_FILE)
    else:
        url = _sqlite_url(Path(uri, sweep, DB_FILE))
    st = _storage_at(url)
    prefix = f"{sweep}/"
    return {n[len(prefix):]: optuna.load_study(study_name=n, storage=st)
            for n in _study_names(st) if n.startswith(prefix)}
