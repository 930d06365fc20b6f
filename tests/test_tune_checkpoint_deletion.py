"""tune.checkpoint_deletion: Tune's deletion of a trial's old checkpoints leaves the driver's loop (the call
returns before the folder is gone), keeps the checkpoints Tune alone keeps, costs one LIST and one
DeleteObjects in S3, and a deletion that fails is a warning that loses nothing else."""
from __future__ import annotations

import logging
import threading
import uuid

import pyarrow.fs
import pytest
from ray.train import Checkpoint, CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult

from tests.s3 import private_s3_server  # noqa: F401
from tune import checkpoint_deletion


@pytest.fixture
def installed():
    assert checkpoint_deletion.install()
    yield
    checkpoint_deletion.uninstall()


def _folder(kind, tmp_path, request):
    """(pyarrow file system, a trial's folder on it, the S3 server or None)."""
    if kind == "local":
        return pyarrow.fs.LocalFileSystem(), str(tmp_path / "trial"), None
    from results.store import open_store
    s3 = request.getfixturevalue("private_s3_server")          # its request counters ours alone
    fs, path = open_store(f"s3://{s3.bucket}/ckpt-{uuid.uuid4().hex[:6]}").pyarrow_filesystem()
    return fs, f"{path}/trial", s3


def _report(manager, fs, root, i):
    """Checkpoint `i` of a trial, as its report leaves it in storage (two files), registered as the driver
    does (Trial.on_checkpoint)."""
    path = f"{root}/checkpoint_{i:06d}"
    fs.create_dir(path)
    for name in ("last.pt", "meta.json"):
        with fs.open_output_stream(f"{path}/{name}") as f:
            f.write(b"x" * 100)
    manager.register_checkpoint(_TrainingResult(Checkpoint(path, filesystem=fs), {"epoch": i}))


def _kept(fs, root):
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    return sorted({i.path[len(root) + 1:].split("/")[0] for i in infos if i.type == pyarrow.fs.FileType.File})


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_old_checkpoints_go_beside_the_loop_and_the_kept_ones_stay(kind, tmp_path, request, installed,
                                                                   monkeypatch):
    fs, root, s3 = _folder(kind, tmp_path, request)
    gate = threading.Event()
    real = checkpoint_deletion.delete

    def held(fs_, path):           # the storage answers only once the test lets it
        assert gate.wait(30)
        real(fs_, path)
    monkeypatch.setattr(checkpoint_deletion, "delete", held)
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    for i in range(4):
        _report(manager, fs, root, i)     # returns while the deletions wait: they are not in the loop
    assert _kept(fs, root) == [f"checkpoint_{i:06d}" for i in range(4)]
    before = s3.settled_requests() if s3 else {}
    gate.set()
    assert checkpoint_deletion.drain(timeout=30) == 0
    if s3:      # per folder one LIST and one DeleteObjects (pyarrow's delete_dir: ~7 requests one by one)
        since = s3.requests_since(before, "DELETE", 2)
        assert since == {"LIST": 2, "DELETE": 2}, since
    assert _kept(fs, root) == ["checkpoint_000002", "checkpoint_000003"]     # what Tune alone keeps
    if s3:
        assert not [i for i in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
                    if "checkpoint_000000" in i.path or "checkpoint_000001" in i.path]   # markers too


def test_a_failed_deletion_is_a_warning_and_the_next_ones_still_run(tmp_path, installed, monkeypatch, caplog):
    fs, root = pyarrow.fs.LocalFileSystem(), str(tmp_path / "trial")
    real, calls = checkpoint_deletion.delete, []

    def flaky(fs_, path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError("storage said no")
        real(fs_, path)
    monkeypatch.setattr(checkpoint_deletion, "delete", flaky)
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=1))
    with caplog.at_level(logging.WARNING, logger="tune.checkpoint_deletion"):
        for i in range(3):
            _report(manager, fs, root, i)
        assert checkpoint_deletion.drain(timeout=30) == 0
    assert _kept(fs, root) == ["checkpoint_000000", "checkpoint_000002"]     # the failed one stays behind
    assert any("checkpoint_000000" in r.getMessage() and "storage said no" in r.getMessage()
               for r in caplog.records), caplog.text


def test_a_sibling_with_a_longer_name_is_not_deleted(tmp_path, request):
    """A folder is its name and a slash: deleting checkpoint_1 leaves checkpoint_10 (S3 lists by prefix)."""
    from results.store import open_store
    s3 = request.getfixturevalue("private_s3_server")
    store = open_store(f"s3://{s3.bucket}/sib-{uuid.uuid4().hex[:6]}")
    for key in ("checkpoint_1/a", "checkpoint_1/b/c", "checkpoint_10/a"):
        store.put(key, b"1")
    store.delete_folder("checkpoint_1")
    store.delete_folder("checkpoint_1")          # already gone: fine
    assert store.list() == ["checkpoint_10/a"]
    local = open_store(str(tmp_path / "store"))
    for key in ("checkpoint_1/a", "checkpoint_10/a"):
        local.put(key, b"1")
    local.delete_folder("checkpoint_1")
    local.delete_folder("checkpoint_1")
    assert local.list() == ["checkpoint_10/a"]


def test_install_is_idempotent_and_uninstall_gives_the_deletions_back():
    from ray.train._internal import checkpoint_manager
    original = checkpoint_manager._delete_fs_path
    assert checkpoint_deletion.install() and checkpoint_deletion.install()
    assert checkpoint_manager._delete_fs_path is checkpoint_deletion.delete_later
    assert checkpoint_deletion._ray_delete is original
    checkpoint_deletion.uninstall()
    assert checkpoint_manager._delete_fs_path is original
