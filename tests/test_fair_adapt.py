"""`fair adapt` end to end on a tiny model: the record, the run folder, exact resume, every bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fair.adapt import adapt
from fair.cli import main as fair_main
from fair.commands import run_adapt
from fair.config import from_dict, load_config
from fair.errors import FairError


def _cfg(d, **over):
    cfg = dict(d)
    for k, v in over.items():
        sec, key = k.split("__")
        cfg[sec] = {**cfg.get(sec, {}), key: v}
    return from_dict(cfg)


def test_adapt_writes_run_folder_and_complete_record(tiny_cfg):
    cfg = _cfg(tiny_cfg)
    record = run_adapt(cfg)
    run_dir = cfg.run.out_dir + "/" + record["run_id"]
    on_disk = json.loads(open(run_dir + "/record.json").read())
    assert on_disk["metrics"] == pytest.approx(record["metrics"], nan_ok=True)
    m = record["metrics"]
    for k in ("test_top1", "test_mean_per_class", "zeroshot_top1", "wca_top1", "val_top1", "gain_over_zeroshot",
              "test_top1_global", "test_top1_las", "pseudo_label_acc", "head_agreement"):
        assert m[k] is not None, k
    assert 0 <= m["test_top1"] <= 100 and m["predictor"] in ("global", "las")
    assert m["gain_over_zeroshot"] == pytest.approx(m["test_top1"] - m["zeroshot_top1"])
    assert m["val_size"] == 12 and m["val_stderr"] > 0
    assert record["provenance"]["descriptions_sha256"] and record["provenance"]["split_sha256"]
    assert all(len(h) == 64 for h in record["provenance"]["split_files_sha256"].values())
    assert record["hparams"]["anchors.mode"] == "set" and record["timings"]["epochs"] == 2
    assert record["hparam_types"]["train.fair_momentum"] == "float" and set(record["hparam_types"]) == set(
        record["hparams"]) - {"data.templates", "model.mean", "model.std"}   # every scalar setting is declared
    rows = [json.loads(ln) for ln in open(run_dir + "/epochs.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("loss", "pseudo_label_acc", "mean_weight", "frac_kept", "val_top1", "images_per_s", "lr"):
        assert rows[-1][key] is not None
    assert open(run_dir + "/config.yaml").read().startswith("method: fair")
    # auto fair_momentum (null) is resolved from the data (4 classes, batch 16) and saved as used
    from fair.losses import fair_momentum_for
    used = fair_momentum_for(None, 4, 16)
    assert record["config"]["train"]["fair_momentum"] == used and f"fair_momentum: {used}" in open(
        run_dir + "/config.yaml").read()
    assert (torch.load(run_dir + "/checkpoints/last.pt", weights_only=False)["epoch"]) == 2


@pytest.mark.parametrize("method", ["zeroshot", "wca", "selftrain", "dpa", "tent"])
def test_every_method_runs_through_the_same_code(tiny_cfg, method):
    over = {"method": method, "train": {**tiny_cfg["train"], "epochs": 1}}
    record = run_adapt(from_dict({**tiny_cfg, **over}))
    m = record["metrics"]
    assert record["method"] == method and m["predictor"] in ("global", "las") and 0 <= m["test_top1"] <= 100
    if method == "zeroshot":
        assert m["test_top1"] == pytest.approx(m["zeroshot_top1"])
    if method == "wca":
        assert m["test_top1"] == pytest.approx(m["wca_top1"])
    if method in ("selftrain", "dpa", "tent"):       # global features only: one predictor, the val split's
        assert record["timings"]["epochs"] == 1 and "test_top1_las" not in m
        assert m["predictor"] == "global" and m["val_top1"] == m["val_top1_global"] is not None
        row = record["epochs"][0]
        assert row["loss"] is not None and row["pseudo_label_acc"] is not None
    if method == "dpa":
        assert row["loss_align"] > 0 and 0 < row["mean_weight"] <= 1 and row["head_agreement"] is not None
        assert row["gamma"] is None
    if method == "tent":                               # no second head, no weights
        assert row["head_agreement"] is None and row["mean_weight"] == 1.0
        assert row["loss"] == pytest.approx(row["loss_ce"] + row["loss_fair"])   # lambda 1: H - H(pbar)


def test_dpa_starts_from_descriptions_when_asked(tiny_cfg, tmp_path):
    """dpa.init=descriptions starts Z from W_fix: a descriptions file is then required (and must cover every
    class), as for fair; with templates it is not needed."""
    d = {**tiny_cfg, "method": "dpa", "dpa": {"init": "descriptions", "alpha": 0.2},
         "train": {**tiny_cfg["train"], "epochs": 1}}
    rec = run_adapt(from_dict(d))
    assert rec["provenance"]["descriptions_sha256"] and rec["config"]["dpa"]["init"] == "descriptions"
    bad = {**d, "data": {**d["data"], "descriptions": "/nonexistent/descriptions.json"},
           "run": {**d["run"], "name": "nodesc"}}
    with pytest.raises(FairError):
        run_adapt(from_dict(bad))
    short = tmp_path / "short.json"                      # a file that misses classes: refused for W_fix only
    short.write_text('{"red square": ["a red square."]}')
    partial = {**d, "data": {**d["data"], "descriptions": str(short)}, "run": {**d["run"], "name": "partial"}}
    with pytest.raises(FairError, match="green circle"):
        run_adapt(from_dict(partial))
    templates = {**partial, "dpa": {"init": "templates"}, "run": {**d["run"], "name": "templates"}}
    assert run_adapt(from_dict(templates))["status"] == "completed"


def test_a_method_section_changes_only_its_own_runs_digest(tiny_cfg):
    """dpa.* / tent.* are read by their method only: a fair run's digest (so its checkpoints and resume check)
    ignores them, and runs made before the sections existed keep their digest."""
    from fair.record import config_digest
    fair, other = from_dict(tiny_cfg), from_dict({**tiny_cfg, "dpa": {"alpha": 0.1}, "tent": {"view": "strong"}})
    assert config_digest(fair) == config_digest(other)
    dpa = from_dict({**tiny_cfg, "method": "dpa"})
    assert config_digest(dpa) != config_digest(from_dict({**tiny_cfg, "method": "dpa", "dpa": {"alpha": 0.1}}))
    assert config_digest(dpa) == config_digest(from_dict({**tiny_cfg, "method": "dpa", "tent": {"diversity": 2}}))


def test_tokens_and_prototype_variants_run(tiny_cfg):
    d = {**tiny_cfg, "local": {"source": "tokens", "top_k": 3}, "anchors": {"mode": "prototype"},
         "weighting": {"mode": "margin", "min": 0.1}, "pseudo": {"gamma_schedule": "cosine"},
         "train": {**tiny_cfg["train"], "epochs": 1, "lambda_fair": 0.5, "fair_momentum": 0.9}}
    record = run_adapt(from_dict(d))
    assert record["metrics"]["test_top1_las"] is not None
    assert record["config"]["train"]["fair_momentum"] == 0.9            # an explicit value is kept


class _Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["fair", "dpa", "tent"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_cfg, tmp_path, method):
    tiny_cfg = {**tiny_cfg, "method": method}
    straight = _cfg(tiny_cfg, run__name="straight")
    adapt(straight, tmp_path / "straight")

    def crash_after_first_epoch(row, ckpt_dir):
        if row["epoch"] == 1:
            raise _Crash()

    interrupted = _cfg(tiny_cfg, run__name="interrupted")
    with pytest.raises(_Crash):
        adapt(interrupted, tmp_path / "interrupted", report=crash_after_first_epoch)
    assert torch.load(tmp_path / "interrupted/checkpoints/last.pt", weights_only=False)["epoch"] == 1
    rec = adapt(interrupted, tmp_path / "interrupted")
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=False)
    b = torch.load(tmp_path / "interrupted/checkpoints/last.pt", weights_only=False)
    assert a["trainable"].keys() == b["trainable"].keys()
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    assert [r["loss"] for r in a["rows"]] == [r["loss"] for r in b["rows"]]
    assert rec["timings"]["epochs"] == 2
    if method == "dpa":          # the memory bank, P and the distribution alignment's queue travel too
        sa, sb = a["method_state"], b["method_state"]
        for k in ("features", "labels", "stamps"):
            assert torch.equal(sa["bank"][k], sb["bank"][k]), k
        assert sa["bank"]["clock"] == sb["bank"]["clock"] > 0
        assert torch.equal(sa["prototypes"], sb["prototypes"]) and torch.equal(sa["da_means"], sb["da_means"])
        assert (sa["bank"]["labels"] >= 0).all()        # every train image has an entry


def test_existing_run_folder_is_refused_then_resumed(tiny_cfg, tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    import yaml
    tiny = {**tiny_cfg, "train": {**tiny_cfg["train"], "epochs": 1}}
    cfg_path.write_text(yaml.safe_dump(tiny))
    assert fair_main(["adapt", "-c", str(cfg_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "val top-1" in out and "test top-1" not in out       # exploration sees validation only
    assert fair_main(["adapt", "-c", str(cfg_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--resume" in err and len(err.splitlines()) == 1
    assert fair_main(["adapt", "-c", str(cfg_path), "--quiet", "--resume"]) == 0   # complete: returns its record


# ------------------------------------------------------------------------------------ bad input


def _run_cli(tmp_path, d, capsys) -> str:
    import yaml
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    rc = fair_main(["adapt", "-c", str(p), "--quiet", "--overwrite"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_missing_dataset_folder(tiny_cfg, tmp_path, capsys):
    d = {**tiny_cfg, "data": {**tiny_cfg["data"], "root": str(tmp_path / "nowhere")}}
    assert "nowhere" in _run_cli(tmp_path, d, capsys)


def test_missing_split_file(tiny_cfg, tmp_path, capsys):
    (tmp_path / "data/dtd/images").mkdir(parents=True)
    d = {**tiny_cfg, "data": {**tiny_cfg["data"], "dataset": "dtd", "root": str(tmp_path / "data")}}
    err = _run_cli(tmp_path, d, capsys)
    assert "split_zhou_DescribableTextures.json" in err and "data.root" in err


@pytest.mark.parametrize("content, words", [
    ("{}", ["empty"]),
    ('{"red square": ["a', ["not valid JSON"]),
    ('{"red square": ["red."], "green circle": ["green."]}', ["blue triangle", "description_fallback"]),
])
def test_bad_descriptions(tiny_cfg, tmp_path, capsys, content, words):
    p = tmp_path / "desc.json"
    p.write_text(content)
    d = {**tiny_cfg, "data": {**tiny_cfg["data"], "descriptions": str(p)}}
    err = _run_cli(tmp_path, d, capsys)
    for w in words:
        assert w in err


def test_description_fallback_is_recorded(tiny_cfg, tmp_path):
    p = tmp_path / "desc.json"
    p.write_text('{"red square": ["a red square."], "green circle": ["a green circle."]}')
    d = {**tiny_cfg, "data": {**tiny_cfg["data"], "descriptions": str(p), "description_fallback": True},
         "train": {**tiny_cfg["train"], "epochs": 1}}
    rec = run_adapt(from_dict(d))
    assert rec["fallback_classes"] == ["blue triangle", "yellow cross"]


def test_unknown_model_and_bad_tag(tiny_cfg, tmp_path, capsys):
    d = {**tiny_cfg, "model": {**tiny_cfg["model"], "name": "ViT-B-33"}}
    assert "ViT-B-32" in _run_cli(tmp_path, d, capsys)
    d = {**tiny_cfg, "model": {**tiny_cfg["model"], "name": "ViT-B-32", "pretrained": "opnai"}}
    assert "openai" in _run_cli(tmp_path, d, capsys)


def test_checkpoint_that_does_not_match_the_architecture(tiny_cfg, tmp_path, capsys):
    import open_clip
    from fair.models import register_builtin_configs
    register_builtin_configs()
    sd = open_clip.create_model("fair-tiny-vit").state_dict()
    sd["visual.proj"] = torch.zeros(64, 32)
    torch.save(sd, tmp_path / "other.pt")
    d = {**tiny_cfg, "model": {**tiny_cfg["model"], "pretrained": str(tmp_path / "other.pt")}}
    err = _run_cli(tmp_path, d, capsys)
    assert "does not match" in err and "fair-tiny-vit" in err
    d["model"]["pretrained"] = str(tmp_path / "missing.pt")
    assert "does not exist" in _run_cli(tmp_path, d, capsys)


def test_good_checkpoint_path_loads(tiny_cfg, tmp_path):
    import open_clip
    from fair.models import register_builtin_configs
    register_builtin_configs()
    torch.manual_seed(1)
    torch.save(open_clip.create_model("fair-tiny-vit").state_dict(), tmp_path / "tiny.pt")
    d = {**tiny_cfg, "model": {**tiny_cfg["model"], "pretrained": str(tmp_path / "tiny.pt")}, "method": "zeroshot"}
    rec = run_adapt(from_dict(d))
    assert rec["pretrained"].endswith("tiny.pt")


def test_corrupt_images_are_skipped_and_counted_or_fail_past_the_threshold(tiny_cfg, imagefolder, tmp_path, capsys):
    root = tmp_path / "folder"
    shutil.copytree(imagefolder, root)
    (root / "train/red_square/000.png").write_bytes(b"not a png")
    d = {**tiny_cfg, "data": {**tiny_cfg["data"], "root": str(root), "max_bad_images": 0.1},
         "train": {**tiny_cfg["train"], "epochs": 1}}
    rec = run_adapt(from_dict(d))
    assert rec["epochs"][0]["bad_images"] in (0, 1)          # the bad file may be in val or train
    (root / "test/red_square/000.png").write_bytes(b"")
    d["data"]["max_bad_images"] = 0.0
    err = _run_cli(tmp_path, d, capsys)
    assert "unreadable" in err and "max_bad_images" in err


def test_unknown_key_and_wrong_type_from_the_cli(tiny_cfg, tmp_path, capsys):
    import yaml
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(tiny_cfg))
    assert fair_main(["adapt", "-c", str(p), "--set", "train.epocs=2"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert fair_main(["adapt", "-c", str(p), "--set", "train.batch_size=big"]) == 2
    assert "train.batch_size" in capsys.readouterr().err


def test_data_check_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "CUB_200_2011/images").mkdir(parents=True)
    (tmp_path / "CUB_200_2011/classes.txt").write_text("1 001.Black_footed_Albatross\n")
    assert fair_main(["data", "check", "cub200", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "images.txt" in err and "train_test_split.txt" in err and "classes.txt" not in err.split("missing")[1].split(";")[0]
    assert fair_main(["data", "list"]) == 0
    assert "resisc45" in capsys.readouterr().out


def test_load_config_defaults_are_runnable():
    cfg = load_config(None)
    assert cfg.method == "fair" and cfg.train.epochs == 15 and cfg.train.batch_size == 64


def _ddp_worker(rank, port, cfg_dict, run_dir, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rec = adapt(from_dict(cfg_dict), run_dir)
    out[rank] = rec["metrics"]["test_top1"], rec["provenance"]["num_processes"], len(rec["epochs"])
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["fair", "dpa"])
def test_two_processes_run_one_adaptation_with_ddp(tiny_cfg, tmp_path, method):
    """The path Ray Train workers take: torch.distributed initialised, the library shards and wraps DDP."""
    import torch.multiprocessing as mp

    from tune.ray_session import free_port
    port = free_port()
    out = mp.Manager().dict()
    cfg = {**tiny_cfg, "method": method, "train": {**tiny_cfg["train"], "epochs": 1}}
    mp.spawn(_ddp_worker, args=(port, cfg, str(tmp_path / "ddp"), out), nprocs=2, join=True)
    assert out[0] == out[1]                       # unsharded evaluation: both processes report the same
    if method == "dpa":     # the bank gathered at the epoch's end holds every image (tests/test_fair_formulas.py
        # checks that the processes' banks and P agree)
        state = torch.load(tmp_path / "ddp/checkpoints/last.pt", weights_only=False)["method_state"]
        assert (state["bank"]["labels"] >= 0).all() and state["bank"]["stamps"].max() > 0
    assert out[0][1] == 2 and out[0][2] == 1
    assert json.loads((tmp_path / "ddp/record.json").read_text())["provenance"]["num_processes"] == 2


def test_bf16_autocast_runs_on_cpu(tiny_cfg):
    d = {**tiny_cfg, "model": {**tiny_cfg["model"], "precision": "bf16"},
         "train": {**tiny_cfg["train"], "epochs": 1}}
    rec = run_adapt(from_dict(d))
    assert rec["config"]["model"]["precision"] == "bf16" and rec["metrics"]["test_top1"] is not None


def test_written_files_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    """Records, configs and results tables are read by a team on shared storage: not 0600."""
    import os

    from fair.io import write_json
    from results.store import open_store
    umask = os.umask(0o022)
    os.umask(umask)
    write_json(tmp_path / "record.json", {"a": 1})
    open_store(tmp_path / "store").put("trials/part.parquet", b"x")
    want = 0o666 & ~umask
    assert (tmp_path / "record.json").stat().st_mode & 0o777 == want
    assert (tmp_path / "store" / "trials" / "part.parquet").stat().st_mode & 0o777 == want


def test_resume_with_another_config_is_refused_naming_the_keys_and_the_folder_is_untouched(tiny_cfg):
    d = {**tiny_cfg, "train": {**tiny_cfg["train"], "epochs": 1}, "run": {**tiny_cfg["run"], "name": "r"}}
    run_adapt(from_dict(d))
    run_dir = Path(tiny_cfg["run"]["out_dir"]) / "r"
    saved = (run_dir / "config.yaml").read_text()
    changed = {**d, "train": {**d["train"], "epochs": 3, "lr": 0.5}, "run": {**d["run"], "resume": True}}
    with pytest.raises(FairError) as e:                  # a finished run: "extend it to 3 epochs" must not pass
        run_adapt(from_dict(changed))
    assert "train.epochs 1 -> 3" in str(e.value) and "train.lr" in str(e.value) and "run.resume" not in str(e.value)
    assert (run_dir / "config.yaml").read_text() == saved
    same = {**d, "run": {**d["run"], "resume": True, "progress": True}}   # run.* may change
    assert run_adapt(from_dict(same))["run_id"] == "r"


def test_a_run_whose_setup_failed_does_not_block_the_fixed_rerun(tiny_cfg):
    d = {**tiny_cfg, "train": {**tiny_cfg["train"], "epochs": 1}, "run": {**tiny_cfg["run"], "name": "s"}}
    bad = {**d, "data": {**d["data"], "descriptions": "/nonexistent/descriptions.json"}}
    with pytest.raises(FairError):
        run_adapt(from_dict(bad))
    assert (Path(tiny_cfg["run"]["out_dir"]) / "s" / "config.yaml").is_file()   # written before set-up failed
    assert run_adapt(from_dict(d))["run_id"] == "s"                          # no --resume/--overwrite needed


def test_ctrl_c_says_how_to_continue_for_each_command(monkeypatch, capsys):
    import fair.cli as cli

    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_dispatch", lambda command: interrupted)
    assert cli.main(["adapt", "-c", "x.yaml"]) == 130
    assert "with --resume" in capsys.readouterr().err
    assert cli.main(["demo"]) == 130
    assert "starts over" in capsys.readouterr().err


def test_every_fair_command_is_a_function_of_its_package():
    """The `fair` table names, for each command, a function its module really has (imported only here)."""
    import fair.cli as cli
    for command in cli.COMMANDS:
        assert callable(cli._dispatch(command)), command
    assert cli.main(["nosuch"]) == 2


class _Stop(Exception):
    pass


def _stop_after_epoch_1(row, ckpt_dir):
    if row["epoch"] == 1:
        raise _Stop


def test_a_resumed_run_keeps_the_momentum_it_started_with(tiny_cfg):
    """A run started before fair_momentum could be auto (0.0, no `resolved` in its checkpoint) resumes with
    0.0 under today's auto default; resolving afresh (0.9 at 4 classes, batch 16) would refuse its checkpoint."""
    import yaml
    from fair.losses import fair_momentum_for
    from fair.commands import prepare_run_dir
    assert fair_momentum_for(None, 4, 16) != 0.0
    d = {**tiny_cfg, "run": {**tiny_cfg["run"], "name": "old"}}
    old = from_dict({**d, "train": {**d["train"], "fair_momentum": 0.0}})
    run_dir = prepare_run_dir(old)
    with pytest.raises(_Stop):
        adapt(old, run_dir, report=_stop_after_epoch_1)
    ckpt = run_dir / "checkpoints" / "last.pt"
    blob = torch.load(ckpt, weights_only=False)
    assert blob.pop("resolved") == {"train.fair_momentum": 0.0}
    torch.save(blob, ckpt)                                            # as an older version wrote it
    record = run_adapt(from_dict({**d, "run": {**d["run"], "resume": True}}))
    assert record["config"]["train"]["fair_momentum"] == 0.0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["fair_momentum"] == 0.0
    assert [r["epoch"] for r in map(json.loads, (run_dir / "epochs.jsonl").read_text().splitlines())] == [1, 2]


def test_a_folder_holding_results_is_never_deleted_without_overwrite(tiny_cfg, tmp_path):
    from fair.commands import prepare_run_dir
    out = Path(tiny_cfg["run"]["out_dir"])
    for name, files in (("trained", ["config.yaml", "epochs.jsonl"]), ("mine", ["notes.txt"])):
        (out / name).mkdir(parents=True)
        for f in files:
            (out / name / f).write_text("x")
        cfg = from_dict({**tiny_cfg, "run": {**tiny_cfg["run"], "name": name}})
        with pytest.raises(FairError, match="already exists"):
            prepare_run_dir(cfg)
        assert sorted(p.name for p in (out / name).iterdir()) == sorted(files)
    for bad in (".", "..", "/abs"):
        with pytest.raises(FairError, match="run.name"):
            from_dict({**tiny_cfg, "run": {**tiny_cfg["run"], "name": bad}})


def test_resume_accepts_a_run_folder_from_before_newer_keys(tiny_cfg):
    """config.yaml written before data.pipeline / data.cache_size existed compares equal at their defaults,
    as the checkpoint digest already does."""
    import yaml
    from fair.commands import check_same_config, prepare_run_dir
    from fair.config import to_dict
    cfg = from_dict({**tiny_cfg, "run": {**tiny_cfg["run"], "name": "older", "resume": True}})
    saved = to_dict(cfg)
    saved["data"].pop("pipeline")
    saved["data"].pop("cache_size")
    run_dir = prepare_run_dir(cfg)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    check_same_config(cfg, run_dir)                                   # no error
    changed = from_dict({**tiny_cfg, "data": {**tiny_cfg["data"], "pipeline": "device"},
                         "run": {**tiny_cfg["run"], "name": "older", "resume": True}})
    with pytest.raises(FairError, match="data.pipeline"):
        check_same_config(changed, run_dir)


def test_record_has_per_image_test_outcomes_on_the_same_images_for_every_method_and_seed(tiny_cfg):
    """test_outcomes: the reported predictor's correctness per test image, on a test subset (the
    data.test_per_class cap) that depends on neither the method nor the run's seed, for paired comparisons."""
    from results.intervals import decode_outcomes
    data = {**tiny_cfg["data"], "test_per_class": 5}
    fair = run_adapt(from_dict({**tiny_cfg, "data": data, "train": {**tiny_cfg["train"], "epochs": 1}}))
    zs = run_adapt(from_dict({**tiny_cfg, "data": data, "method": "zeroshot", "seed": 7,
                              "run": {**tiny_cfg["run"], "name": "zs-s7"}}))
    for rec in (fair, zs):
        out = rec["test_outcomes"]
        bits = decode_outcomes(out)
        assert out["n"] == len(bits) == 20                                  # 4 classes x 5
        assert 100 * bits.mean() == pytest.approx(rec["metrics"]["test_top1"])
    assert fair["test_outcomes"]["ids_sha"] == zs["test_outcomes"]["ids_sha"]
