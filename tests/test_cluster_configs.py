"""cluster/: launcher YAMLs against Ray's own schema, KubeRay manifests, Dockerfile, runtime env, CLI input
errors that need no cluster. Offline and fast (no Ray instance)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHERS = sorted(CLUSTER.glob("*.yaml"))
LAUNCHERS = [p for p in LAUNCHERS if p.name != "runtime_env.yaml"]
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))


def _fair(argv, capsys):
    from fair.cli import main
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def ray_version():
    import ray
    return ray.__version__


def project_image(ray_version: str) -> str:
    """The image every launcher and manifest names: the project version and Ray's in its tag."""
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    return f"ghcr.io/your-org/fair-sweeps:{version}-ray{ray_version}-py311-gpu"


def test_launchers_exist():
    assert {p.name for p in LAUNCHERS} >= {"aws-gpu.yaml", "gcp-gpu.yaml"}


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_passes_ray_schema_and_pins_ray(path, ray_version):
    from cluster import validate
    raw = validate.read_yaml(path)
    prepared = validate.validate_file(path)                  # prepare_config + validate_config
    assert prepared["available_node_types"][raw["head_node_type"]]["max_workers"] == 0
    # Every node runs the project image (cluster/Dockerfile: torch and the project at this version inside),
    # the same one KubeRay runs, so a cold node installs nothing before its first trial.
    imgs = validate.images(raw)
    assert imgs and set(imgs) == {project_image(ray_version)}, imgs
    setup = "; ".join(c for k in ("setup_commands", "head_setup_commands", "worker_setup_commands")
                      for c in raw.get(k) or [])
    installed = {w for args in re.findall(r"pip install([^&;|]*)", setup) for w in args.split() if w[0] != "-"}
    assert installed <= {"awscli", "google-api-python-client==1.7.8"}, installed      # small tools only
    # No credentials in the file: identities only.
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{12,}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY\s*[:=]", text)


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_node_types(path):
    """CPU-0 head; GPU workers autoscale from zero; declared resources match the instance table (which
    prices the plan); at least one spot and one multi-GPU type; storage through an identity."""
    from cluster import costs, validate
    raw = validate.read_yaml(path)
    nodes = {n.name: n for n in validate.node_types(raw)}
    head = nodes[raw["head_node_type"]]
    assert head.resources.get("CPU") == 0 and not head.gpus
    workers = [n for n in nodes.values() if n.max_workers > 0]
    assert workers and all(raw["available_node_types"][n.name]["min_workers"] == 0 for n in workers)
    for n in workers:
        inst = costs.instance(n.instance)
        assert inst is not None, f"{n.instance} missing from cluster/costs.py INSTANCES"
        assert (n.resources["CPU"], n.resources["GPU"]) == (inst.cpus, inst.gpus)
    assert any(n.spot for n in workers) and any(n.gpus >= 4 for n in workers)
    nc = [raw["available_node_types"][n.name]["node_config"] for n in workers]
    assert all("IamInstanceProfile" in c or "serviceAccounts" in c for c in nc)


def test_plan_default_node_types_are_the_aws_launchers():
    from cluster import plan, validate
    assert [n.name for n in plan.default_node_types()] == \
        [n.name for n in validate.node_types(validate.read_yaml(CLUSTER / "aws-gpu.yaml"))]


def test_validate_rejects_typo_in_one_line(tmp_path, capsys):
    bad = tmp_path / "typo.yaml"
    bad.write_text((CLUSTER / "aws-gpu.yaml").read_text().replace("min_workers: 0", "min_workerz: 0", 1))
    rc, out, err = _fair(["cluster", "validate", str(bad)], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "min_workerz" in err and "schema" in err


def test_validate_rejects_wrong_ray_image(tmp_path, capsys):
    bad = tmp_path / "old.yaml"
    bad.write_text((CLUSTER / "aws-gpu.yaml").read_text().replace("-ray2.60.0-py311", "-ray2.9.0-py311"))
    rc, _, err = _fair(["cluster", "validate", str(bad)], capsys)
    assert rc == 2 and err.count("\n") == 1 and "does not pin Ray" in err


def test_launchers_boot_a_driver_that_runs_the_pinned_torch():
    """AWS: every node type names the current DLAMI (Ray's fallback is an Ubuntu 18.04 / CUDA 11.2 one);
    GCP: every GPU type boots a Deep Learning VM family whose driver branch is at least MIN_NVIDIA_DRIVER,
    and that minimum is what the installed torch's CUDA build needs (CUDA 12.x: R525+, 13.x: R580+)."""
    from cluster import validate
    aws = validate.read_yaml(CLUSTER / "aws-gpu.yaml")
    assert {n: t["node_config"]["ImageId"] for n, t in aws["available_node_types"].items()} == \
        dict.fromkeys(aws["available_node_types"], validate.AWS_GPU_AMI)
    gcp = validate.read_yaml(CLUSTER / "gcp-gpu.yaml")
    gpu_types = [n.name for n in validate.node_types(gcp) if n.gpus]
    assert gpu_types and all(validate._gcp_boot_image(gcp["available_node_types"][n]["node_config"])
                             == validate.GCP_GPU_IMAGE for n in gpu_types)
    assert int(validate.GCP_GPU_IMAGE.rsplit("-nvidia-", 1)[1]) >= validate.MIN_NVIDIA_DRIVER
    torch = pytest.importorskip("torch")
    if torch.version.cuda:
        needed = {12: 525, 13: 580}[int(torch.version.cuda.split(".")[0])]
        assert validate.MIN_NVIDIA_DRIVER >= needed, (torch.version.cuda, validate.MIN_NVIDIA_DRIVER)


def _without_docker(d):
    d.pop("docker")


def _aws_ami(value):
    def edit(d):
        nc = d["available_node_types"]["gpu-small"]["node_config"]
        nc.pop("ImageId") if value is None else nc.update(ImageId=value)
    return edit


def _gcp_image(value):
    def edit(d):
        disk = d["available_node_types"]["gpu-small"]["node_config"]["disks"][0]["initializeParams"]
        disk.pop("sourceImage") if value is None else disk.update(sourceImage=value)
    return edit


@pytest.mark.parametrize("launcher, edit, says", [
    ("aws-gpu.yaml", _without_docker, "names no docker image"),
    ("gcp-gpu.yaml", _without_docker, "names no docker image"),
    ("aws-gpu.yaml", _aws_ami(None), "'gpu-small' sets no ImageId"),
    ("aws-gpu.yaml", _aws_ami("latest_dlami"), "'latest_dlami' is not an AMI id"),
    ("gcp-gpu.yaml", _gcp_image(None), "'gpu-small' names no boot disk sourceImage"),
    ("gcp-gpu.yaml", _gcp_image("projects/deeplearning-platform-release/global/images/family/common-cu121"),
     "boots 'common-cu121', whose NVIDIA driver is not R580+"),
    ("gcp-gpu.yaml", _gcp_image("projects/deeplearning-platform-release/global/images/family/"
                                "common-cu128-ubuntu-2204-nvidia-570"), "is not R580+"),
], ids=["aws-no-image", "gcp-no-image", "aws-no-ami", "aws-latest-dlami", "gcp-no-boot-image",
        "gcp-old-family", "gcp-r570"])
def test_launcher_that_cannot_boot_is_one_line_wherever_it_is_read(launcher, edit, says, tmp_path, capsys,
                                                                    fake_cluster):
    """validate, plan --cluster-config and submit --cluster-config read a launcher through one check (submit
    before anything is submitted)."""
    from cluster import validate
    data = validate.read_yaml(CLUSTER / launcher)
    edit(data)
    bad = tmp_path / launcher
    bad.write_text(yaml.safe_dump(data))
    sweep = str(ROOT / "configs/sweeps/demo.yaml")
    for argv in (["validate", str(bad)], ["plan", "--config", sweep, "--cluster-config", str(bad)],
                 ["submit", "--config", sweep, "--cluster-config", str(bad)]):
        rc, out, err = _fair(["cluster", *argv], capsys)
        assert rc == 2 and not out and err.count("\n") == 1 and says in err, (argv[0], err)
    assert fake_cluster.submitted == []


def test_validate_ok_prints_per_file(capsys):
    rc, out, _ = _fair(["cluster", "validate", *map(str, LAUNCHERS)], capsys)
    assert rc == 0 and out.count(": ok") == len(LAUNCHERS)


# ------------------------------------------------------------------------------------------------ KubeRay

def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _cluster_specs():
    for path in KUBERAY:
        for doc in _docs(path):
            if doc.get("kind") == "RayCluster":
                yield path.name, doc["spec"]
            elif doc.get("kind") == "RayJob":
                yield path.name, doc["spec"]["rayClusterSpec"]


def test_kuberay_files():
    assert {p.name for p in KUBERAY} == {"raycluster.yaml", "rayjob.yaml"}
    kinds = {d["kind"] for p in KUBERAY for d in _docs(p)}
    assert {"RayCluster", "RayJob"} <= kinds


@pytest.mark.parametrize("name,spec", list(_cluster_specs()), ids=lambda x: x if isinstance(x, str) else "")
def test_kuberay_cluster_spec(name, spec, ray_version):
    assert spec["rayVersion"] == ray_version
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    containers = head["template"]["spec"]["containers"]
    assert containers and all(ray_version in c["image"] for c in containers)
    groups = spec["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["groupName"] and g["minReplicas"] == 0 and g["maxReplicas"] >= 1
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert isinstance(g["rayStartParams"], dict)
        cs = g["template"]["spec"]["containers"]
        assert cs and all(ray_version in c["image"] for c in cs)
        assert all(int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1 for c in cs)


def test_kuberay_rayjob_runs_a_sweep():
    job = next(d for d in _docs(CLUSTER / "kuberay" / "rayjob.yaml") if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m fair.cli sweep --config ")
    assert "--address auto" in spec["entrypoint"]
    config = re.search(r"--config (\S+)", spec["entrypoint"]).group(1)
    assert (ROOT / config.replace("/home/ray/fair-sweeps/", "")).is_file()
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(env["env_vars"], dict)
    from cluster.runtime_env import check_no_secrets
    check_no_secrets(env["env_vars"])
    for path in KUBERAY:
        for doc in _docs(path):
            assert doc["apiVersion"] in ("ray.io/v1", "v1") and doc["metadata"]["name"]


def test_dockerfile_pins_ray_and_constraints(ray_version):
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert base == f"rayproject/ray:{ray_version}-py311-gpu"
    assert "-c constraints.txt" in text
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "constraints.txt").read_text(), re.M))
    assert pins["ray"] == ray_version
    images = {c["image"] for p in KUBERAY for d in _docs(p) for c in _containers(d)}
    assert images == {project_image(ray_version)}, images


def _containers(doc):
    spec = doc.get("spec") or {}
    spec = spec.get("rayClusterSpec", spec)
    groups = [spec.get("headGroupSpec")] + list(spec.get("workerGroupSpecs") or []) if "headGroupSpec" in spec else []
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ------------------------------------------------------------------------------------------ runtime env

def test_runtime_env_build(tmp_path):
    from cluster import runtime_env
    env = runtime_env.build(ROOT, CLUSTER / "runtime_env.yaml", {"EXTRA": "1"},
                            environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_SECRET_ACCESS_KEY": "x",
                                     "HOME": "/root"})
    assert env["working_dir"] == str(ROOT)
    assert {"/.venv", "/.git", "/runs", "/sweeps", "/results_out", "/.cache"} <= set(env["excludes"])
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and env["env_vars"]["EXTRA"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in env["env_vars"] and "HOME" not in env["env_vars"]
    secret = tmp_path / "env.yaml"
    secret.write_text("env_vars: {AWS_SECRET_ACCESS_KEY: abc}\n")
    from cluster.errors import ClusterError
    with pytest.raises(ClusterError, match="AWS_SECRET_ACCESS_KEY"):
        runtime_env.build(ROOT, secret)


def test_excludes_keep_sweep_configs():
    """Unanchored 'sweeps' would also drop configs/sweeps/ (gitignore semantics, as Ray applies them)."""
    from ray._private.runtime_env.packaging import _get_excludes
    from cluster.runtime_env import DEFAULT_EXCLUDES
    match = _get_excludes(ROOT, DEFAULT_EXCLUDES)
    assert not match(ROOT / "configs" / "sweeps")
    assert match(ROOT / "sweeps") and match(ROOT / ".venv")


def test_entrypoint_uses_relative_config_and_cluster_python():
    from cluster.cli import entrypoint, parser
    a = parser().parse_args(["submit", "--config", "configs/sweeps/demo.yaml", "--set", "budget.epochs=3",
                             "--storage", "s3://b/p", "--smoke-test"])
    ep = entrypoint("configs/sweeps/demo.yaml", a)
    assert ep == ("python -m fair.cli sweep --config configs/sweeps/demo.yaml --address auto "
                  "--set budget.epochs=3 --storage s3://b/p --smoke-test --no-data-check")


def test_submit_config_outside_working_dir(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("name: x\ndatasets: [dtd]\n")
    rc, _, err = _fair(["cluster", "submit", "--config", str(cfg), "--address", "http://127.0.0.1:9"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "outside the folder shipped" in err


def test_unreachable_address_is_one_line(capsys):
    from tune.ray_session import free_port
    addr = f"http://127.0.0.1:{free_port()}"          # a port nothing listens on
    for argv in (["status", "raysubmit_x"], ["list"],
                 ["submit", "--config", str(ROOT / "configs/sweeps/demo.yaml")]):
        rc, _, err = _fair(["cluster", *argv, "--address", addr], capsys)
        assert rc == 2 and err.count("\n") == 1, err
        assert f"cannot reach a Ray cluster at {addr}" in err and "ray up cluster/aws-gpu.yaml" in err


def test_autoscaler_status_node_types():
    """How submit tells an autoscaling cluster (configured node types) from a hand-started head."""
    from cluster.jobs import _READONLY_TYPE, node_type_names
    legacy = ("Cluster status: 2 nodes\n - ResourceUsage: 0.0/4.0 CPU\n - NodeIdleSeconds: Min=7\n"
              "Worker node types:\n - gpu-small: 1 (1 pending)\n - head: 1\n")
    assert node_type_names(legacy) == {"gpu-small", "head"}
    assert node_type_names("Cluster status: 0 nodes\n - ResourceUsage: 0.0/4.0 CPU\nWorker node types:") == set()
    readonly = node_type_names("Active:\n 1 node_5e777cad2c366b82fabc5b1dc6e7a9b0137dd4020adeca9a542d8848\n")
    assert readonly and all(_READONLY_TYPE.match(t) for t in readonly)


class FakeCluster:
    """Stands in for cluster.jobs.Cluster: an autoscaling cluster with no node yet that records submits."""
    submitted: list = []

    def __init__(self, address=None):
        self.address = address or "http://127.0.0.1:8265"

    def nodes(self):
        return []

    def autoscaling(self):
        return True

    def submit(self, entrypoint, runtime_env, submission_id=None, metadata=None):
        FakeCluster.submitted.append((entrypoint, metadata))
        return "raysubmit_fake"


@pytest.fixture
def fake_cluster(monkeypatch):
    import cluster.jobs
    FakeCluster.submitted = []
    monkeypatch.setattr(cluster.jobs, "Cluster", FakeCluster)
    return FakeCluster


@pytest.mark.parametrize("bad, says", [
    (["--set", "base.train.lrr=1e-4"], "train.lrr"),
    (["--set", "datasets=[dtd,oxfordpets]"], "oxfordpets"),
    (["--storage", "s3:/fair-sweeps/x"], "s3:/fair-sweeps/x"),
    (["--set", "budget.trials_per_dataset=0"], "trials_per_dataset"),
    (["--", "--set", "budget.epochs=0"], "budget.epochs"),          # `fair sweep` flags after -- too
    (["--", "--no-such-flag"], "--no-such-flag"),
    (["--", "--plan"], "--plan"),                                      # planning is local, not a job
], ids=["fair-key", "dataset", "storage", "budget", "after-dashdash", "unknown-flag", "plan"])
def test_submit_validates_sweep_before_submitting(fake_cluster, bad, says, capsys):
    """What the job's `fair sweep` would refuse is refused here: one line, exit 2, nothing submitted."""
    argv = ["cluster", "submit", "--config", str(ROOT / "configs/sweeps/demo.yaml"), "--storage", "s3://b/p"]
    rc, out, err = _fair(argv + bad, capsys)
    assert rc == 2 and not out and err.count("\n") == 1 and says in err, err
    assert fake_cluster.submitted == []


def test_submit_valid_sweep_says_data_is_unchecked(fake_cluster, tmp_path, capsys, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="cluster")
    rc, out, err = _fair(["cluster", "submit", "--config", str(ROOT / "configs/sweeps/demo.yaml"), "--smoke-test",
                          "--storage", str(tmp_path), "--set", "budget.epochs=3"], capsys)
    assert rc == 0 and out.strip() == "raysubmit_fake", err
    (ep, meta), = fake_cluster.submitted
    assert meta == {"sweep": "demo-smoke"} and "--no-data-check" in ep and "--set budget.epochs=3" in ep
    checked = [r.getMessage() for r in caplog.records if "config valid" in r.getMessage()]
    assert len(checked) == 1 and "dataset files not checked here" in checked[0] and "4 trials" in checked[0]
