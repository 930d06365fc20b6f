"""tune.state_sync: a Tune snapshot uploads the files of the driver's folder that changed, and what lands in
storage is what uploading the whole folder would have put there."""
import os
import time

import pyarrow.fs
import pytest

from tests.s3 import private_s3_server  # noqa: F401
from tune import state_sync

OLD = time.time() - 60          # modified long enough ago to be recorded (state_sync.SETTLE_S)


def _write(folder, rel, text, mtime=OLD):
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def _tree(fs, root):
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    return {i.path[len(root) + 1:]: fs.open_input_stream(i.path).read().decode()
            for i in infos if i.type == pyarrow.fs.FileType.File}


def _uploads(monkeypatch):
    """The files each upload sends (state_sync.upload_files, wrapped)."""
    calls, orig = [], state_sync.upload_files

    def counted(local_path, files, fs, fs_path):
        calls.append(sorted(files))
        return orig(local_path, files, fs, fs_path)
    monkeypatch.setattr(state_sync, "upload_files", counted)
    return calls


def _destination(kind, tmp_path, s3):
    if kind == "local":
        return pyarrow.fs.LocalFileSystem(), str(tmp_path / "remote" / "exp")
    from results.store import open_store
    fs, path = open_store(f"s3://{s3.bucket}/state-sync-{time.time_ns()}").pyarrow_filesystem()
    return fs, f"{path}/exp"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_snapshots_upload_what_changed_and_storage_holds_the_whole_folder(kind, tmp_path, monkeypatch, request):
    s3 = request.getfixturevalue("private_s3_server") if kind == "s3" else None    # its counters ours alone
    fs, dest = _destination(kind, tmp_path, s3)
    staging = tmp_path / "staging"
    for i in range(3):
        _write(staging, f"trial_{i}/progress.csv", f"epoch\n1\n# {i}")
        _write(staging, f"trial_{i}/params.json", f'{{"i": {i}}}')
    _write(staging, "experiment_state.json", '{"trials": 3}')
    calls = _uploads(monkeypatch)
    monkeypatch.setattr(state_sync, "_uploaded", {})
    assert state_sync.install()
    from ray.train._internal import storage as ray_storage
    assert ray_storage._upload_to_fs_path is state_sync.upload_changed
    ray_storage._upload_to_fs_path(str(staging), fs, dest)       # as Tune's syncer calls it
    assert len(calls[-1]) == 7                                    # the first snapshot: everything
    ray_storage._upload_to_fs_path(str(staging), fs, dest)
    assert len(calls) == 1                                        # nothing changed: no upload at all
    _write(staging, "trial_1/progress.csv", "epoch\n1\n2\n# 1", OLD + 1)   # a running trial reports
    _write(staging, "experiment_state.json", '{"trials": 4}', OLD + 1)    # same size, a later write
    _write(staging, "trial_3/params.json", '{"i": 3}')            # a new trial
    _write(staging, "trial_0/params.json", '{"i": 9}', mtime=time.time())   # just written: uploaded, not recorded
    before = s3.settled_requests() if s3 else {}
    ray_storage._upload_to_fs_path(str(staging), fs, dest)
    assert calls[-1] == ["experiment_state.json", "trial_0/params.json", "trial_1/progress.csv",
                         "trial_3/params.json"]
    if s3:      # to S3, one PUT per file and nothing else (pyarrow's copy: ~6 requests per small file)
        assert s3.requests_since(before, "PUT", 4) == {"PUT": 4}
    ray_storage._upload_to_fs_path(str(staging), fs, dest)
    assert calls[-1] == ["trial_0/params.json"]                   # written within SETTLE_S: once more
    local = {str(p.relative_to(staging)): p.read_text() for p in staging.rglob("*") if p.is_file()}
    assert _tree(fs, dest) == local


def test_a_failed_upload_records_nothing(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    _write(staging, "a/result.json", "{}")
    monkeypatch.setattr(state_sync, "_uploaded", {})
    state_sync.install()
    from ray.train._internal import storage as ray_storage

    def refuse(*a, **kw):
        raise OSError("storage refused the write")
    with monkeypatch.context() as m:
        m.setattr(ray_storage, "_pyarrow_fs_copy_files", refuse)
        with pytest.raises(OSError):
            state_sync.upload_changed(str(staging), pyarrow.fs.LocalFileSystem(), str(tmp_path / "dest"))
    calls = _uploads(monkeypatch)
    state_sync.upload_changed(str(staging), pyarrow.fs.LocalFileSystem(), str(tmp_path / "dest"))
    assert calls == [["a/result.json"]]
