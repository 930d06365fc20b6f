"""Shared GPUs (tune.gpu_share): the memory cap of a fractional GPU share, and a CUDA out-of-memory error in
a trial turned into a failed record that says so. No GPU here: the cap is checked as arithmetic, and the
out-of-memory path by raising the real torch.cuda.OutOfMemoryError from the training step of a real trial
(bench/gpu_check.sh runs both on a GPU)."""
from __future__ import annotations

import gc
import traceback

import pytest
import torch

from fair.errors import FairError
from tune import gpu_share
from tune.gpu_share import GiB, memory_cap

TORCH_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.81 GiB of which "
             "1.12 GiB is free. Of the allocated memory 33.1 GiB is allocated by PyTorch")


def test_a_share_is_capped_below_its_part_of_the_gpu_by_the_context_headroom():
    cap = memory_cap(0.25, 80 * GiB)
    assert cap.cap_bytes == 19 * GiB and cap.fraction == pytest.approx(19 / 80)
    assert cap.describe() == "cap 19.00 GiB = share 0.25 of 80.00 GiB"
    assert cap.as_dict() == {"share": 0.25, "cap_gib": 19.0, "total_gib": 80.0, "fraction": 0.2375}
    # four trials at 0.25 and their CUDA contexts fit on the GPU together
    assert 4 * (cap.cap_bytes + gpu_share.CONTEXT_HEADROOM) <= 80 * GiB
    half = memory_cap(0.5, 139.81 * GiB)
    assert half.fraction == pytest.approx(0.5 - 1 / 139.81)


def test_a_whole_gpu_or_none_is_not_capped_and_a_share_smaller_than_a_context_is_refused():
    assert memory_cap(1, 80 * GiB) is None and memory_cap(0, 80 * GiB) is None
    assert memory_cap(2, 80 * GiB) is None
    with pytest.raises(FairError, match=r"GPU=0.01 leaves 0.80 GiB .* raise the share"):
        memory_cap(0.01, 80 * GiB)
    # no CUDA touched off the GPU, or for a whole GPU
    assert gpu_share.apply_memory_cap(0.25, "cpu") is None
    assert gpu_share.apply_memory_cap(1.0, "cuda") is None


def test_the_oom_message_names_the_cap_the_memory_settings_and_the_fix():
    from fair.config import from_dict
    cfg = from_dict({"model": {"name": "ViT-B-32", "precision": "bf16"}, "train": {"batch_size": 256},
                     "local": {"source": "crops", "num_crops": 16}})
    msg = gpu_share.oom_message(memory_cap(0.25, 80 * GiB), cfg, TORCH_OOM)
    assert msg.startswith("CUDA out of memory (cap 19.00 GiB = share 0.25 of 80.00 GiB; tried to allocate 2.00 GiB)")
    for part in ("model.name=ViT-B-32 (224 px)", "model.precision=bf16", "train.batch_size=256",
                 "local.source=crops, local.num_crops=16", "eval.batch_size=128",
                 "lower train.batch_size or local.num_crops", "raise resources.per_worker.GPU"):
        assert part in msg
    assert "\n" not in msg and len(f"tune.gpu_share.GpuOutOfMemoryError: {msg}") < 500   # error_line's limit


def _plan(tmp_path, per_worker):
    from tune.trainable import TrialPlan
    return TrialPlan(sweep="oom", storage=str(tmp_path / "sweeps"), study_configs={}, objective="val_top1",
                     num_workers=1, per_worker=per_worker, use_gpu=False, backend="gloo", worker_max_failures=0,
                     controller_failure_limit=0, checkpoints_to_keep=1, runner="direct")


def test_an_out_of_memory_trial_frees_its_model_and_leaves_a_failed_record_that_says_why(tiny_cfg, tmp_path,
                                                                                        monkeypatch):
    """The per-trial code path (tune.trainable.adapt_trial, as both runners call it) with a fake report
    hook; the training step raises what the CUDA allocator raises at the cap."""
    import fair.engine
    from tune import storage
    from tune.failures import write_failed_record
    from tune.trainable import Session, adapt_trial

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(TORCH_OOM)
    monkeypatch.setattr(fair.engine, "train_step", out_of_memory)
    plan = _plan(tmp_path, {"CPU": 1})
    reports = []
    payload = {"plan": plan, "trial_id": "t_oom", "study": "fair/imagefolder", "config": tiny_cfg}
    with pytest.raises(gpu_share.GpuOutOfMemoryError) as info:
        adapt_trial(payload, Session(0, None, lambda metrics, ckpt: reports.append(metrics)))
    err = info.value
    assert str(err).startswith("CUDA out of memory (no cap: the process had the whole GPU; tried to allocate "
                               "2.00 GiB) with model.name=fair-tiny-vit (32 px)")
    assert "train.batch_size=16" in str(err) and "local.num_crops=3" in str(err) and reports == []
    # not chained to the allocator's error, whose frames held the model and optimizer; those are gone
    assert err.__context__ is None and err.__cause__ is None
    gc.collect()
    assert not [o for o in gc.get_objects() if issubclass(type(o), (fair.engine.Student, torch.optim.Optimizer))]
    assert not storage.list_records(plan.storage, plan.sweep)

    # the sweep driver's side: Ray saves the trial's traceback, the failed record gets its telling line
    text = "Failure # 1 (occurred at 2026-12-01_10-00-00)\nray::ImplicitFunc.train()\n" + \
        "".join(traceback.format_exception(err))
    plan.study_configs["fair/imagefolder"] = tiny_cfg
    write_failed_record(plan, "t_oom", {"study": "fair/imagefolder"}, text)
    rec = storage.read_json(plan.storage, storage.record_key("oom", "imagefolder", "t_oom"))
    assert rec["status"] == "failed"
    assert rec["error"] == f"tune.gpu_share.GpuOutOfMemoryError: {err}"


_SIMULATED_TRIAL = """
import sys
from fair.config import FairConfig, to_dict
from tune.trainable import Session, TrialPlan, adapt_trial
cfg = to_dict(FairConfig())
cfg["train"]["epochs"] = 2
sim = {"setup_s": {cfg["data"]["dataset"]: 0}, "epoch_s": {cfg["data"]["dataset"]: 0},
       "eval_s": {cfg["data"]["dataset"]: 0}, "checkpoint_mb": 0.01, "space": {}}
for share, device in ((1.0, "cuda"), (0.25, "cpu")):
    plan = TrialPlan(sweep="sim", storage=sys.argv[1], study_configs={}, objective="val_top1", num_workers=1,
                     per_worker={"CPU": 1, "GPU": share}, use_gpu=True, backend="gloo", worker_max_failures=0,
                     controller_failure_limit=0, checkpoints_to_keep=1, runner="direct", simulate=sim)
    cfg["model"]["device"] = device
    reports = []
    adapt_trial({"plan": plan, "trial_id": f"t{share}", "study": "fair/fashion_mnist", "config": cfg,
                 "tune_config": {"study": "fair/fashion_mnist"}}, Session(0, None, lambda m, c: reports.append(m)))
    assert len(reports) == 2, reports
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip")))
"""


def test_a_simulated_trial_imports_no_torch(tmp_path):
    """bench.scale's trials replace adapt() only, and its imports with it (their time is in the simulated
    setup): the trial code around it (memory cap, out-of-memory guard) must not import torch on its own,
    or each of 64 simulated slots costs ~250 MB more and a 64-slot cluster no longer fits one machine."""
    import subprocess
    import sys

    from tests.test_results_records import REPO
    p = subprocess.run([sys.executable, "-c", _SIMULATED_TRIAL, str(tmp_path / "sweeps")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]"
