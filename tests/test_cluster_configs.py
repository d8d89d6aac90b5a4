"""Offline checks of the cluster configs under cluster/ (docs/CLUSTER.md explains their use).

KubeRay manifests (cluster/kuberay/*.yaml, and the RayJob template in the nightly ConfigMap)
are validated by `jsonschema` against cluster/kuberay/schema/, written from the KubeRay and
Kubernetes API references. The hand-written checks are the project's own rules only: pinned
images, token auth, credentials from Secrets, an in-cluster head, entrypoints the job scripts
accept, GPU counts that match them. Launcher YAMLs (cluster/*.yaml) go through Ray's own
`prepare_config` + `validate_config` (what `ray up` runs first), offline.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import ray
import typer
import yaml
from jsonschema import Draft202012Validator
from ray.autoscaler._private.util import prepare_config, validate_config
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR, KUBERAY_DIR = ROOT / "cluster", ROOT / "cluster" / "kuberay"
LAUNCHER_CONFIGS = sorted(CLUSTER_DIR.glob("*.yaml"))
KUBERAY_MANIFESTS = sorted(KUBERAY_DIR.glob("*.yaml"))
SCHEMAS = {p.name: json.loads(p.read_text()) for p in (KUBERAY_DIR / "schema").glob("*.json")}
MANIFEST_VALIDATOR = Draft202012Validator(
    SCHEMAS["manifest.schema.json"], format_checker=Draft202012Validator.FORMAT_CHECKER,
    registry=Registry().with_resources((s["$id"], Resource.from_contents(s))
                                       for s in SCHEMAS.values()))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RAY_VERSION = ray.__version__
CPU_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311"
GPU_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311-gpu"
GPU = "nvidia.com/gpu"
# Options every entrypoint must pass to its job script, on top of what the CLI requires.
ENTRYPOINT_OPTIONS = {
    "jobs/train.py": {"--data", "--model", "--gpus", "--epochs", "--split", "--output"},
    "jobs/tune.py": {"--data", "--trials", "--max-epochs", "--gpus-per-trial", "--output"},
    "jobs/nightly_score.py": {"--checkpoint", "--input", "--output"},
}
SECRET_ENV_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "RAY_AUTH_TOKEN"}
SECRET_LITERALS = [re.compile(r"AKIA[0-9A-Z]{16}"), re.compile(
    r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{30,}")]
RUN_DATE_PLACEHOLDER = "__RUN_DATE__"  # replaced by the nightly CronJob's init container
DROP = object()


def load_manifests(path: Path) -> list[dict]:
    """Every document of a file plus the manifests embedded in its ConfigMaps (the JSON
    round trip un-shares YAML anchors, so that a test's mutation touches one place)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for config_map in [d for d in docs if d.get("kind") == "ConfigMap"]:
        for key, text in config_map.get("data", {}).items():
            if key.endswith((".yaml", ".yml")):
                docs += yaml.safe_load_all(text.replace(RUN_DATE_PLACEHOLDER, "20260101"))
    return json.loads(json.dumps(docs))


def schema_errors(docs: list[dict]) -> list[str]:
    return [f"{d.get('kind')}/{d['metadata'].get('name') or d['metadata'].get('generateName')} "
            f"{e.json_path}: {e.message[:300]}" for d in docs
            for e in MANIFEST_VALIDATOR.iter_errors(d)]


def find(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


def mutate(doc: dict, path: str | tuple, value) -> None:
    """At `path` ("a.0.b" or a tuple of keys): DROP deletes, "->new" renames, (old, new) edits
    a string, anything else is set."""
    *parents, key = [int(k) if k.isdigit() else k
                     for k in (path.split(".") if isinstance(path, str) else path)]
    for parent in parents:
        doc = doc[parent]
    if isinstance(value, tuple):
        doc[key] = doc[key].replace(*value)
    elif isinstance(value, str) and value.startswith("->"):
        doc[value[2:]] = doc.pop(key)
    elif value is DROP:
        del doc[key]
    else:
        doc[key] = value


# ---------------------------------------------------------------- schema validation
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_file_is_a_valid_2020_12_schema(name):
    Draft202012Validator.check_schema(SCHEMAS[name])
    assert SCHEMAS[name]["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "API reference" in SCHEMAS[name]["$comment"], "name the reference it was written from"


@pytest.mark.parametrize("path", KUBERAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_matches_schema(path):
    docs = load_manifests(path)
    assert docs and schema_errors(docs) == []


TRAIN, TUNE, NIGHTLY, RC = (f"{n}.yaml" for n in
                            ("rayjob-train", "rayjob-tune", "nightly-score-cronjob", "raycluster"))
H, W = "spec.rayClusterSpec.headGroupSpec", "spec.rayClusterSpec.workerGroupSpecs.0"
WC, SC = f"{W}.template.spec.containers.0", "spec.submitterPodTemplate.spec.containers.0"
CRON_POD, ENTRY = "spec.jobTemplate.spec.template.spec", "spec.entrypoint"


@pytest.mark.parametrize("file, kind, path, value, expected", [
    (TRAIN, "RayJob", f"{H}.rayStartParams", "->rayStartParam", "'rayStartParam' was unexpected"),
    (TRAIN, "RayJob", f"{W}.replicas", "->replica", "'replica' was unexpected"),
    (TRAIN, "RayJob", f"{W}.replicas", "1", "'1' is not of type 'integer'"),
    (TRAIN, "RayJob", f"{H}.rayStartParams.num-cpus", 0, "0 is not of type 'string'"),
    (TUNE, "RayJob", H, DROP, "'headGroupSpec' is a required property"),
    (TUNE, "RayJob", f"{W}.template.spec.containers", DROP, "'containers' is a required"),
    (TUNE, "RayJob", f"{WC}.resources.limits", {GPU: "eight"}, "'eight' is not valid"),
    (TUNE, "RayJob", f"{H}.serviceType", "Public", "'Public' is not one of"),
    (TUNE, "RayJob", f"{WC}.env.1.value", "x", "should not be valid"),  # value and valueFrom
    (TUNE, "RayJob", f"{WC}.volumeMounts.0.mountPath", DROP, "'mountPath' is a required"),
    (NIGHTLY, "CronJob", "spec.schedule", DROP, "'schedule' is a required property"),
    (NIGHTLY, "CronJob", "spec.schedule", "daily at 2", "does not match"),
    (NIGHTLY, "CronJob", f"{CRON_POD}.restartPolicy", "Always", "'Always' is not one of"),
    (NIGHTLY, "Role", "rules.0.verbs", ["craete"], "'craete' is not one of"),
    (NIGHTLY, "RayJob", "spec.shutdownAfterJobFinishes", "->shutdownAfterJobFinish", "unexpected"),
    (NIGHTLY, "ConfigMap", "kind", "Secret", "'Secret' is not one of"),
])
def test_schema_rejects_broken_manifest(file, kind, path, value, expected):
    doc = find(load_manifests(KUBERAY_DIR / file), kind)
    mutate(doc, path, value)
    assert any(expected in e for e in schema_errors([doc])), schema_errors([doc])
    with pytest.raises(jsonschema.ValidationError):
        MANIFEST_VALIDATOR.validate(doc)


# ---------------------------------------------------------------- project rules
def cluster_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    return {"RayCluster": [spec], "RayJob": [spec.get("rayClusterSpec", {})]}.get(doc["kind"], [])


def ray_containers(doc: dict) -> Iterator[tuple[str, dict, dict]]:
    """(where, container, cluster) of each Ray process: head, workers, autoscaler, submitter."""
    for cluster in cluster_specs(doc):
        for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
            pod = group["template"]["spec"]
            yield group.get("groupName", "head"), pod["containers"][0], cluster
        if cluster.get("enableInTreeAutoscaling"):
            autoscaler = {"image": CPU_IMAGE, **cluster.get("autoscalerOptions", {})}
            yield "autoscaler", autoscaler, cluster
        if "submitterPodTemplate" in doc["spec"]:
            yield "submitter", doc["spec"]["submitterPodTemplate"]["spec"]["containers"][0], cluster


def containers(tree) -> Iterator[dict]:
    for key, value in tree.items() if isinstance(tree, dict) else enumerate(tree):
        if key in ("containers", "initContainers"):
            yield from value
        elif isinstance(value, dict | list):
            yield from containers(value)


def gpus(container: dict) -> tuple[int, int]:
    res = container.get("resources", {})
    return int(res.get("requests", {}).get(GPU, 0)), int(res.get("limits", {}).get(GPU, 0))


def env(container: dict, name: str) -> dict:
    return next((e for e in container.get("env", []) if e["name"] == name), {})


def container_problems(doc: dict) -> list[str]:
    """Pinned images (the pinned Ray image on Ray processes and GPUs); secrets never literal."""
    problems = [f"rayVersion {c.get('rayVersion')!r} != {RAY_VERSION}"
                for c in cluster_specs(doc) if c.get("rayVersion") != RAY_VERSION]
    for c in containers(doc):
        image, (requested, limited) = c.get("image", ""), gpus(c)
        if not re.fullmatch(r"[^:]+:[\w.-]+", image) or image.endswith(":latest"):
            problems.append(f"{c['name']}: image {image!r} has no pinned tag")
        if requested != limited or (limited and image != GPU_IMAGE):
            problems.append(f"{c['name']}: {GPU} needs requests == limits and image {GPU_IMAGE}")
        problems += [f"{c['name']}: {e['name']} is a literal; use valueFrom.secretKeyRef"
                     for e in c.get("env", []) if e["name"] in SECRET_ENV_VARS and "value" in e]
    return problems + [f"{where}: image {c['image']!r} must be {CPU_IMAGE} or {GPU_IMAGE}"
                       for where, c, _ in ray_containers(doc)
                       if c["image"] not in {CPU_IMAGE, GPU_IMAGE}]


def cluster_problems(doc: dict) -> list[str]:
    """Token auth on every Ray process, S3 settings from a Secret, in-cluster head, sizes."""
    problems = []
    for where, c, cluster in ray_containers(doc):
        secret = cluster.get("authOptions", {}).get("secretName")
        if cluster.get("authOptions", {}).get("mode") != "token" or not secret:
            problems.append(f"{where}: authOptions must be {{mode: token, secretName: ...}}")
        if env(c, "RAY_AUTH_MODE").get("value") != "token":
            problems.append(f"{where}: env must set RAY_AUTH_MODE=token")
        if env(c, "RAY_AUTH_TOKEN").get("valueFrom", {}).get("secretKeyRef", {}).get(
                "name") != secret:
            problems.append(f"{where}: RAY_AUTH_TOKEN must come from Secret {secret}")
        if where not in ("submitter", "autoscaler") and not any(
                "secretRef" in s for s in c.get("envFrom", [])):
            problems.append(f"{where}: object storage must come from envFrom.secretRef")
    for cluster in cluster_specs(doc):
        head = cluster["headGroupSpec"]
        if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
            problems.append("head service must be ClusterIP without ingress")
        problems += [f"{g['groupName']}: need minReplicas <= replicas <= maxReplicas"
                     for g in cluster.get("workerGroupSpecs", []) if not
                     g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 0)]
    return problems


@functools.cache
def cli_command(script: str):
    """The `wbc-ray` command that jobs/X.py runs: it calls `app(["<command>", *sys.argv[1:]])`."""
    from wbc_ray.cli import app  # heavy (model registry): imported only when a RayJob is checked

    name = re.search(r'app\(\["([\w-]+)"', (ROOT / script).read_text()).group(1)
    return typer.main.get_command(app).commands[name]


def job_problems(doc: dict) -> list[str]:
    """The job script accepts the entrypoint's options; the cluster fits its GPU options."""
    if doc["kind"] != "RayJob":
        return []
    spec, tokens = doc["spec"], shlex.split(doc["spec"].get("entrypoint", ""))
    if tokens[:1] != ["python"] or len(tokens) < 2 or tokens[1] not in ENTRYPOINT_OPTIONS:
        return [f"entrypoint is not `python <one of {sorted(ENTRYPOINT_OPTIONS)}> ...`"]
    script, args = tokens[1], tokens[2:]
    try:
        options = cli_command(script).make_context(script, list(args)).params
    except typer.TyperException as err:
        return [f"{script} rejects {args}: {err}"]
    given = {a.partition("=")[0] for a in args}
    problems = [f"{script} is missing {o}" for o in sorted(ENTRYPOINT_OPTIONS[script] - given)]
    # In K8sJobMode the submitter pod runs `ray job submit` through a shell, which expands `$`.
    if "$" in spec["entrypoint"] + spec.get("runtimeEnvYAML", ""):
        problems.append("entrypoint and runtimeEnvYAML must not contain '$'")
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    archive = f"wbc-ray-{PYPROJECT['project']['version']}.zip"
    if not re.fullmatch(rf"s3://.+/{re.escape(archive)}", str(runtime_env.get("working_dir"))):
        problems.append(f"runtime_env working_dir must be an s3:// {archive}")
    wanted = [d for d in PYPROJECT["project"]["dependencies"] if not d.startswith("ray[")]
    if (pip := runtime_env.get("pip") or []) != wanted:
        problems.append(f"runtime_env pip must be pyproject's dependencies without ray: missing "
                        f"{[d for d in wanted if d not in pip]}, extra "
                        f"{[d for d in pip if d not in wanted]}")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes must be true (no idle GPU clusters)")
    groups = [(g, n) for g in spec["rayClusterSpec"].get("workerGroupSpecs", [])
              if (n := gpus(g["template"]["spec"]["containers"][0])[1])]
    fixed = all(len({g.get(k) for k in ("minReplicas", "replicas", "maxReplicas")}) == 1
                for g, _ in groups)
    if script == "jobs/train.py" and not (
            fixed and sum(g.get("replicas", 0) * n for g, n in groups) == options["gpus"]):
        problems.append(f"fixed-size GPU groups must add up to --gpus {options['gpus']}")
    if script == "jobs/tune.py" and min([n for _, n in groups] or [0]) < options["gpus_per_trial"]:
        problems.append(f"every GPU pod needs >= --gpus-per-trial {options['gpus_per_trial']}")
    return problems


def wiring_problems(docs: list[dict]) -> list[str]:
    """CronJob -> ServiceAccount -> RoleBinding -> Role that creates rayjobs; its ConfigMap."""
    names, problems = {(d["kind"], d["metadata"].get("name")) for d in docs}, []
    for cron in (d for d in docs if d["kind"] == "CronJob"):
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        account = pod.get("serviceAccountName")
        roles = {b["roleRef"]["name"] for b in docs if b["kind"] == "RoleBinding"
                 and {"kind": "ServiceAccount", "name": account} in b.get("subjects", [])}
        rules = [r for d in docs if d["kind"] == "Role" and d["metadata"]["name"] in roles
                 for r in d.get("rules", [])]
        if ("ServiceAccount", account) not in names or not any(
                "ray.io" in r.get("apiGroups", []) and "rayjobs" in r.get("resources", [])
                and "create" in r["verbs"] for r in rules):
            problems.append(f"service account {account!r} must exist and may create ray.io rayjobs")
        problems += [f"ConfigMap {v['configMap']['name']!r} is not in the file"
                     for v in pod.get("volumes", [])
                     if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in names]
    return problems


def project_problems(docs: list[dict]) -> list[str]:
    rules = (container_problems, cluster_problems, job_problems)
    return [p for doc in docs for rule in rules for p in rule(doc)] + wiring_problems(docs)


def test_ray_pin_matches_installed_ray():
    assert f"ray[data,train,tune]=={RAY_VERSION}" in PYPROJECT["project"]["dependencies"]


@pytest.mark.parametrize("path", KUBERAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_follows_project_rules(path):
    assert project_problems(load_manifests(path)) == []


def test_manifests_run_exactly_the_documented_job_scripts():
    docs = [d for path in KUBERAY_MANIFESTS for d in load_manifests(path)]
    used = {shlex.split(d["spec"]["entrypoint"])[1] for d in docs if d["kind"] == "RayJob"}
    assert used == set(ENTRYPOINT_OPTIONS)
    assert set(re.findall(r"python (jobs/\S+\.py)", (ROOT / "docs/CLUSTER.md").read_text())) == used
    template = find(load_manifests(KUBERAY_DIR / NIGHTLY), "ConfigMap")["data"]["rayjob.yaml"]
    assert f"name: wbc-ray-score-{RUN_DATE_PLACEHOLDER}" in template


@pytest.mark.parametrize("file, kind, path, value, expected", [
    (TRAIN, "RayJob", f"{WC}.image", GPU_IMAGE.replace(RAY_VERSION, "2.59.0"), "must be rayproj"),
    (TRAIN, "RayJob", f"{WC}.image", CPU_IMAGE, f"needs requests == limits and image {GPU_IMAGE}"),
    (TRAIN, "RayJob", f"{WC}.resources.requests", {GPU: "4"}, "needs requests == limits"),
    (TRAIN, "RayJob", f"{W}.maxReplicas", 2, "fixed-size GPU groups"),
    (TRAIN, "RayJob", f"{W}.replicas", 2, "must add up to --gpus 8"),
    (TRAIN, "RayJob", f"{H}.serviceType", "LoadBalancer", "ClusterIP"),
    (TRAIN, "RayJob", f"{SC}.env", [], "submitter: env must set RAY_AUTH_MODE=token"),
    (TRAIN, "RayJob", f"{SC}.env.1.valueFrom.secretKeyRef.name", "other", "from Secret wbc-ray-"),
    (TRAIN, "RayJob", "spec.rayClusterSpec.authOptions", DROP, "authOptions must be"),
    (TRAIN, "RayJob", f"{WC}.env.0", {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}, "a literal"),
    (TRAIN, "RayJob", f"{WC}.envFrom", DROP, "envFrom.secretRef"),
    (TRAIN, "RayJob", ENTRY, ("jobs/train.py", "jobs/train_v2.py"), "entrypoint is not"),
    (TRAIN, "RayJob", ENTRY, ("--epochs 150", "--epochs many"), "jobs/train.py rejects"),
    (TRAIN, "RayJob", ENTRY, ("--epochs 150", "--epoch 150"), "jobs/train.py rejects"),
    (TRAIN, "RayJob", ENTRY, ("--epochs 150", ""), "missing --epochs"),
    (TRAIN, "RayJob", "spec.shutdownAfterJobFinishes", False, "shutdownAfterJobFinishes"),
    (TUNE, "RayJob", "spec.runtimeEnvYAML", ("torch==", "torch>="), "extra ['torch>=2.14.1']"),
    (TUNE, "RayJob", ENTRY, ("--trials 32", "--trials 32 --name $USER"), "'$'"),
    (TUNE, "RayJob", f"{WC}.resources", {}, "--gpus-per-trial 1"),
    (RC, "RayCluster", "spec.autoscalerOptions.env", DROP, "autoscaler: env"),
    (RC, "RayCluster", "spec.workerGroupSpecs.0.minReplicas", 3, "minReplicas <= replicas"),
    (NIGHTLY, "RayJob", ENTRY, ("--input", "--inputs"), "jobs/nightly_score.py rejects"),
    (NIGHTLY, "Role", "rules.0.verbs", ["get"], "may create ray.io rayjobs"),
    (NIGHTLY, "CronJob", f"{CRON_POD}.volumes.0.configMap.name", "gone", "ConfigMap 'gone'"),
    (NIGHTLY, "CronJob", f"{CRON_POD}.containers.0.image", "bitnami/kubectl", "no pinned tag"),
])
def test_project_rules_reject_broken_manifest(file, kind, path, value, expected):
    docs = load_manifests(KUBERAY_DIR / file)
    before = project_problems(docs)
    mutate(find(docs, kind), path, value)
    assert schema_errors(docs) == [], "the break must be one that only the project rules catch"
    new_problems = [p for p in project_problems(docs) if p not in before]
    assert any(expected in p for p in new_problems), new_problems


@pytest.mark.parametrize("path", [*LAUNCHER_CONFIGS, *KUBERAY_MANIFESTS, ROOT / "docs/CLUSTER.md"],
                         ids=lambda p: p.name)
def test_no_literal_credentials(path):
    assert not any(rx.search(path.read_text()) for rx in SECRET_LITERALS)


def test_secret_scan_catches_literal_keys():
    key_id, secret = "AKIA" + "Q" * 16, "wJalr" + "x" * 35  # built here: no key-shaped literal
    for text in (key_id, f"aws_secret_access_key: {secret}",
                 f'"AWS_SECRET_ACCESS_KEY": "{secret}"'):
        assert any(rx.search(text) for rx in SECRET_LITERALS), text
    assert not any(rx.search("--from-literal=AWS_SECRET_ACCESS_KEY=<your-secret-key>")
                   for rx in SECRET_LITERALS)


# ---------------------------------------------------------------- cluster-launcher configs
@pytest.fixture
def no_network(monkeypatch):
    """Any socket use fails, so a validation that goes online cannot pass."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during config validation: {args!r}")

    for owner, name in [(socket.socket, "connect"), (socket, "create_connection"),
                        (socket, "getaddrinfo")]:
        monkeypatch.setattr(owner, name, refuse)


def ray_validate(config: dict) -> dict:
    """Merge the provider's packaged defaults.yaml, then Ray's JSON schema. The provider
    bootstrap, which needs cloud credentials, is not part of it."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def launcher_problems(config: dict) -> list[str]:
    """Project rules on top of Ray's schema; `config` is the prepared (merged) config."""
    nodes, head, docker = config["available_node_types"], config["head_node_type"], config["docker"]
    field = {"aws": "IamInstanceProfile", "gcp": "serviceAccounts"}[config["provider"]["type"]]
    problems = [f"{name}: node_config needs {field} (identity from the machine)"
                for name, t in nodes.items() if field not in t["node_config"]
                and not (field == "serviceAccounts" and name == head)]
    train = find(load_manifests(KUBERAY_DIR / TRAIN), "RayJob")["spec"]["entrypoint"]
    gpus_needed = int(re.search(r"--gpus (\d+)", train).group(1))
    head_start = " ".join(config["head_start_ray_commands"])
    wheel = f"wbc_ray-{PYPROJECT['project']['version']}-py3-none-any.whl"
    setup = {role: " ; ".join(config[role]) for role in ("head_setup_commands",
                                                         "worker_setup_commands")}
    checks = {
        "provider.gcp_credentials embeds credentials": "gcp_credentials" not in config["provider"],
        f"docker images must be {CPU_IMAGE} (head) and {GPU_IMAGE} (workers)":
            (docker.get("head_image"), docker.get("worker_image")) == (CPU_IMAGE, GPU_IMAGE),
        "docker.run_options must set --env RAY_AUTH_MODE=token":
            "--env RAY_AUTH_MODE=token" in docker.get("run_options", []),
        "file_mounts must ship the auth token to ~/.ray/auth_token":
            any(remote.endswith("/.ray/auth_token") for remote in config["file_mounts"]),
        "the head node type must advertise CPU: 0": nodes[head]["resources"].get("CPU") == 0,
        f"no worker node type offers the {gpus_needed} GPUs of `train --gpus`": any(
            t["resources"].get("GPU", 0) >= gpus_needed and t["max_workers"]
            for t in nodes.values()),
        "the dashboard must listen on 127.0.0.1 (use `ray dashboard`)":
            "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start,
        **{f"{role} must pip install {wheel} and not reinstall Ray":
           f"pip install --no-cache-dir /home/ray/wbc-ray-dist/{wheel}" in commands
           and "ray-wheels" not in commands and "ray[default]" not in commands
           for role, commands in setup.items()},
    }
    return problems + [problem for problem, ok in checks.items() if not ok]


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_ray_validation_and_project_rules(path, no_network):
    assert launcher_problems(ray_validate(yaml.safe_load(path.read_text()))) == []


def mutate_launcher(config: dict, keys: tuple, value) -> None:
    """`mutate`, once per worker node type where `keys` holds "{worker}"."""
    workers = [n for n in config["available_node_types"] if n != config["head_node_type"]]
    for worker in workers if "{worker}" in keys else [""]:
        mutate(config, tuple(k.format(worker=worker) for k in keys), value)


NODE = ("available_node_types", "{worker}")


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("keys, value", [
    (("max_workers",), "->max_worker"), (("head_node_type",), "no-such-node-type"),
    ((*NODE, "max_workers"), "->max_worker"), ((*NODE, "resources", "GPU"), "eight"),
])
def test_broken_launcher_config_fails_ray_validation(path, keys, value, no_network):
    config = yaml.safe_load(path.read_text())
    mutate_launcher(config, keys, value)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(config)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("keys, value, expected", [
    (("docker", "worker_image"), GPU_IMAGE.replace(RAY_VERSION, "2.59.0"), "docker images"),
    (("docker", "run_options"), [], "RAY_AUTH_MODE"),
    (("head_start_ray_commands",), ["ray start --head --dashboard-host=0.0.0.0"], "dashboard"),
    (("worker_setup_commands",), ["pip install wbc-ray"], "must pip install"),
    (("file_mounts",), {}, "auth token"),
    ((*NODE, "resources", "GPU"), 1, "GPUs of `train --gpus`"),
])
def test_project_rules_reject_broken_launcher_config(path, keys, value, expected):
    prepared = ray_validate(yaml.safe_load(path.read_text()))
    mutate_launcher(prepared, keys, value)
    problems = launcher_problems(prepared)
    assert any(expected in p for p in problems), problems
