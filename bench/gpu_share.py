"""GPU check of shared GPUs (tune.gpu_share): two trials at `resources.per_worker.GPU: 0.5` on one GPU, one
of which outgrows its share. It must fail alone, at its cap, with a failed record that says so; the other
must complete.

    python -m bench.gpu_share            # on a machine with one CUDA GPU (bench/gpu_check.sh runs it)

Each trial is a process that runs the sweep's per-trial code (tune.trainable.adapt_trial, as Ray's trial or
Train worker would, with a local storage and no Ray) on the tiny random model. At its first epoch report
`calm` takes a ballast of 40% of the GPU and holds it to its end; `hog` then tries to take 70%: past its cap
(50% less the context headroom), but also past what `calm` left free, so without caps one of the two would
fail for the other's appetite. The hog's failed record is written as the sweep driver writes it (its
error line). Exit code 0 when every check passes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROLES = ("calm", "hog")
SHARE = 0.5
BALLAST, HOG_WANTS = 0.4, 0.7          # fractions of the GPU's memory
STUDY = "imagefolder"


def trial_config(root: Path) -> dict:
    """A two-epoch FAIR run of the tiny random model on the synthetic folder, on the GPU."""
    return {"method": "fair", "seed": 0,
            "model": {"name": "fair-tiny-vit", "pretrained": "", "device": "cuda"},
            "data": {"dataset": "imagefolder", "root": str(root / "data"),
                     "descriptions": str(root / "descriptions.json"), "val_per_class": 2, "num_workers": 0},
            "train": {"epochs": 2, "batch_size": 8, "max_steps_per_epoch": 2},
            "local": {"num_crops": 2, "top_k": 2}, "eval": {"local_views": 2, "batch_size": 32},
            "run": {"cache_root": str(root / "cache"), "progress": False}}


def make_data(root: Path) -> None:
    from bench.throughput import synthetic_jpegs
    synthetic_jpegs(root / "data", 60, 40, 40, classes=4)
    (root / "descriptions.json").write_text(json.dumps({f"c{c}": [f"a picture of c{c}."] for c in range(4)}))


def plan_for(root: Path):
    from tune.trainable import TrialPlan
    return TrialPlan(sweep="gpu-share", storage=str(root / "sweeps"), study_configs={STUDY: trial_config(root)},
                     objective="val_top1", num_workers=1, per_worker={"CPU": 1, "GPU": SHARE}, use_gpu=True,
                     backend="nccl", worker_max_failures=0, controller_failure_limit=0, checkpoints_to_keep=1,
                     runner="direct")


def wait_for(path: Path, timeout_s: float = 90) -> None:
    end = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(0.2)


def trial(root: Path, role: str) -> int:
    """One trial process: `calm` holds a ballast, `hog` outgrows its share (see the module docstring)."""
    import torch

    from fair.config import from_dict, to_dict
    from fair.record import failed_record
    from tune import storage
    from tune.gpu_share import GpuOutOfMemoryError
    from tune.trainable import Session, adapt_trial, stamp_record
    plan = plan_for(root)
    total = torch.cuda.get_device_properties(0).total_memory
    held = []

    def send(metrics: dict, checkpoint_dir) -> None:
        if held or metrics.get("epoch") != 1:
            return
        if role == "calm":
            held.append(torch.empty(int(BALLAST * total), dtype=torch.uint8, device="cuda"))
            (root / "calm.ready").touch()
            wait_for(root / "hog.done")              # hold the ballast while the hog tries
        else:
            wait_for(root / "calm.ready")
            while sum(t.numel() for t in held) < HOG_WANTS * total:     # 1 GiB at a time, up to 70%
                held.append(torch.empty(2**30, dtype=torch.uint8, device="cuda"))

    config = trial_config(root)
    payload = {"plan": plan, "trial_id": role, "study": STUDY, "config": config, "device": config["model"]["device"]}
    try:
        adapt_trial(payload, Session(0, None, send))
    except GpuOutOfMemoryError as e:
        held.clear()                                 # the hog's own tensors; the guard freed the trial's
        seen = {"peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                "after_mib": torch.cuda.memory_allocated() / 2**20}
        (root / "hog.json").write_text(json.dumps(seen))
        print(f"{role}: {type(e).__name__} at {seen['peak_gib']:.2f} GiB allocated at most; "
              f"{seen['after_mib']:.0f} MiB still allocated after it", flush=True)
        error = f"{type(e).__module__}.{type(e).__name__}: {e}"     # the line tune.failures.error_line picks
        rec = stamp_record(failed_record(to_dict(from_dict(trial_config(root))), error), plan, role, STUDY)
        storage.write_json(plan.storage, storage.record_key(plan.sweep, STUDY, role), rec)
    finally:
        if role == "hog":
            (root / "hog.done").touch()
    return 0


def check(root: Path, codes: dict) -> list[str]:
    """The failed checks (empty: all passed)."""
    from tune import storage
    bad = [f"{r} exited with {c}" for r, c in codes.items() if c != 0]
    recs = {}
    for role in ROLES:
        try:
            recs[role] = storage.read_json(str(root / "sweeps"), storage.record_key("gpu-share", STUDY, role))
        except Exception as e:  # noqa: BLE001 - a missing record is a failed check
            bad.append(f"{role}: no record ({type(e).__name__}: {e})")
    calm, hog = recs.get("calm") or {}, recs.get("hog") or {}
    cap = (calm.get("provenance") or {}).get("gpu_memory_cap") or {}
    print(f"calm: {calm.get('status')}, provenance.gpu_memory_cap {cap}")
    print(f"hog:  {hog.get('status')}, error {hog.get('error')}")
    if calm.get("status") != "completed":
        bad.append("calm did not complete: its neighbour took its memory")
    if cap.get("share") != SHARE or not 0 < cap.get("cap_gib", 0) < SHARE * cap.get("total_gib", 0):
        bad.append(f"calm's record carries no cap of share {SHARE} below half the GPU")
    if hog.get("status") != "failed" or f"CUDA out of memory (cap {cap.get('cap_gib', 0):.2f} GiB = share 0.5 of" \
            not in (hog.get("error") or ""):
        bad.append("hog's record is not a failed record saying it ran out of its capped CUDA memory")
    if cap and hog.get("error") and "train.batch_size=8" not in hog["error"]:
        bad.append("hog's error does not name its memory settings")
    seen = json.loads((root / "hog.json").read_text()) if (root / "hog.json").is_file() else {}
    if cap and seen and seen["peak_gib"] > cap["cap_gib"]:
        bad.append(f"hog allocated {seen['peak_gib']:.2f} GiB, past its cap of {cap['cap_gib']:.2f} GiB")
    if seen and seen["after_mib"] > 64:
        bad.append(f"hog still held {seen['after_mib']:.0f} MiB after its out-of-memory error")
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trial", choices=ROLES, help=argparse.SUPPRESS)     # a child process
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.trial:
        return trial(a.dir, a.trial)
    import torch
    if not torch.cuda.is_available():
        print("gpu_share: no CUDA GPU here; nothing to check")
        return 0
    root = Path(tempfile.mkdtemp(prefix="gpu-share-"))
    make_data(root)
    t = time.monotonic()
    procs = {r: subprocess.Popen([sys.executable, "-m", "bench.gpu_share", "--trial", r, "--dir", str(root)])
             for r in ROLES}
    try:
        codes = {"hog": procs["hog"].wait(timeout=120)}
        (root / "hog.done").touch()                  # even when the hog died early: calm stops waiting
        codes["calm"] = procs["calm"].wait(timeout=60)
    except subprocess.TimeoutExpired as e:
        codes = {r: p.poll() for r, p in procs.items()}
        print(f"gpu_share: a trial process ran past its time ({e})")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    bad = check(root, codes)
    print(f"gpu_share: {'ok' if not bad else 'FAILED: ' + '; '.join(bad)} ({time.monotonic() - t:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
