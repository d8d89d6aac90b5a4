"""Offline checks of the cluster configs under cluster/ (docs/CLUSTER.md explains their use).

Cluster-launcher YAMLs (cluster/*.yaml) go through Ray's own validation: the
`prepare_config` + `validate_config` pair that `ray up` runs before it talks to
a cloud (private API of the pinned Ray). `prepare_config` only merges the
provider's packaged defaults.yaml; the provider bootstrap that needs cloud
credentials (`bootstrap_aws` / `bootstrap_gcp`) is not part of it. The
`no_network` fixture turns that claim into a checked fact.

KubeRay manifests (cluster/kuberay/*.yaml) have no CRD schema available offline,
so the structural checker below encodes the fields KubeRay requires and the
project's rules: pinned images, token auth on every Ray container, object-storage
credentials only from Secrets, in-cluster services only, and GPU counts that
match the job's options. Each rule has a test that breaks a loaded copy and
expects the checker to say so.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import socket
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = ROOT / "cluster"
KUBERAY_DIR = CLUSTER_DIR / "kuberay"
CLUSTER_DOC = ROOT / "docs" / "CLUSTER.md"
LAUNCHER_CONFIGS = sorted(CLUSTER_DIR.glob("*.yaml"))
KUBERAY_MANIFESTS = sorted(KUBERAY_DIR.glob("*.yaml"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

RAY_VERSION = ray.__version__
CPU_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311"
GPU_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311-gpu"
GPU = "nvidia.com/gpu"

# The job scripts and the options every entrypoint must pass to them.
ENTRYPOINT_OPTIONS = {
    "jobs/train.py": {"--data", "--model", "--gpus", "--epochs", "--split", "--output"},
    "jobs/tune.py": {"--data", "--trials", "--max-epochs", "--gpus-per-trial", "--output"},
    "jobs/nightly_score.py": {"--checkpoint", "--input", "--output"},
}
# Env vars that may only come from a Secret (valueFrom), never a literal value.
SECRET_ENV_VARS = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "RAY_AUTH_TOKEN",
}
AWS_ACCESS_KEY_ID_LITERAL = re.compile(r"AKIA[0-9A-Z]{16}")
AWS_SECRET_LITERAL = re.compile(
    r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{30,}"
)
# The nightly RayJob template carries this token until the CronJob renders it.
RUN_DATE_PLACEHOLDER = "__RUN_DATE__"


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------
def pinned_ray_version() -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(r"ray\[[a-z,]+\]==(\S+)", dep)
        if match:
            return match.group(1)
    raise ValueError("pyproject.toml pins no ray[...]==X dependency")


def runtime_env_pip() -> list[str]:
    """pyproject's dependencies minus ray, which the rayproject/ray image already has."""
    return [d for d in PYPROJECT["project"]["dependencies"] if not d.startswith("ray[")]


def secret_literal_problems(text: str) -> list[str]:
    problems = []
    if AWS_ACCESS_KEY_ID_LITERAL.search(text):
        problems.append("literal AWS access key id (AKIA...)")
    if AWS_SECRET_LITERAL.search(text):
        problems.append("literal aws_secret_access_key value")
    return problems


def parse_entrypoint(entrypoint: str) -> tuple[str, dict[str, str]]:
    """`python SCRIPT --opt value ...` -> (SCRIPT, {"--opt": "value"})."""
    tokens = shlex.split(entrypoint)
    if len(tokens) < 2 or tokens[0] != "python":
        raise ValueError(f"entrypoint is not `python SCRIPT ...`: {entrypoint!r}")
    options: dict[str, str] = {}
    args = iter(tokens[2:])
    for token in args:
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r} in {entrypoint!r}")
        name, _, value = token.partition("=")
        options[name] = value or next(args, "")
    return tokens[1], options


# --------------------------------------------------------------------------------------
# KubeRay manifests: loading
# --------------------------------------------------------------------------------------
def load_manifests(path: Path) -> list[dict]:
    """Every document of a multi-document file, plus manifests embedded in ConfigMaps.

    The JSON round trip un-shares YAML anchors so that an in-memory mutation
    touches one place only.
    """
    docs = [json.loads(json.dumps(d)) for d in yaml.safe_load_all(path.read_text()) if d]
    embedded = []
    for doc in docs:
        if doc.get("kind") != "ConfigMap":
            continue
        for key, value in (doc.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                rendered = value.replace(RUN_DATE_PLACEHOLDER, "20260101")
                embedded += [d for d in yaml.safe_load_all(rendered) if isinstance(d, dict)]
    return docs + [json.loads(json.dumps(d)) for d in embedded]


def manifest(name: str) -> list[dict]:
    return load_manifests(KUBERAY_DIR / name)


def find(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d.get("kind") == kind)


# --------------------------------------------------------------------------------------
# KubeRay manifests: the checker
# --------------------------------------------------------------------------------------
def env_entry(container: dict, name: str) -> dict | None:
    return next((e for e in container.get("env") or [] if e.get("name") == name), None)


def gpus(container: dict) -> tuple[int, int]:
    resources = container.get("resources") or {}
    return (
        int((resources.get("requests") or {}).get(GPU, 0)),
        int((resources.get("limits") or {}).get(GPU, 0)),
    )


def container_problems(where: str, container: dict, *, ray_node: bool) -> list[str]:
    problems = []
    image = container.get("image", "")
    if not container.get("name") or not image:
        problems.append(f"{where}: container needs a name and an image")
    if image not in {CPU_IMAGE, GPU_IMAGE} and (ray_node or image.startswith("rayproject/")):
        problems.append(f"{where}: image {image!r} must be {CPU_IMAGE} or {GPU_IMAGE}")
    if ":" not in image or image.endswith(":latest"):
        problems.append(f"{where}: image {image!r} has no pinned tag")
    requested, limited = gpus(container)
    if requested != limited:
        problems.append(f"{where}: {GPU} requests {requested} != limits {limited}")
    if limited and image != GPU_IMAGE:
        problems.append(f"{where}: GPU container must use image {GPU_IMAGE}, not {image!r}")
    for entry in container.get("env") or []:
        if entry.get("name") in SECRET_ENV_VARS and "value" in entry:
            problems.append(f"{where}: {entry['name']} is a literal; use valueFrom.secretKeyRef")
    return problems + (auth_env_problems(where, container) if ray_node else [])


def auth_env_problems(where: str, container: dict) -> list[str]:
    """RAY_AUTH_MODE=token set explicitly, and the token itself from a Secret."""
    mode = env_entry(container, "RAY_AUTH_MODE")
    if mode is None or mode.get("value") != "token":
        return [f"{where}: env must set RAY_AUTH_MODE=token explicitly"]
    token = env_entry(container, "RAY_AUTH_TOKEN")
    if token is None or "secretKeyRef" not in (token.get("valueFrom") or {}):
        return [f"{where}: RAY_AUTH_TOKEN must come from valueFrom.secretKeyRef"]
    return []


def pod_problems(
    where: str, template: Any, *, ray_pod: bool, object_storage: bool = False
) -> list[str]:
    """Checks a pod template; in a Ray pod the first container is the Ray one (KubeRay's rule)."""
    spec = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(spec, dict) or not spec.get("containers"):
        return [f"{where}: template.spec.containers is missing or empty"]
    ray_container = spec["containers"][0] if ray_pod else None
    problems = []
    for c in spec.get("initContainers", []) + spec["containers"]:
        problems += container_problems(f"{where}/{c.get('name')}", c, ray_node=c is ray_container)
    if object_storage and not any(
        "secretRef" in source for source in ray_container.get("envFrom") or []
    ):
        problems.append(f"{where}: object-storage settings must come from envFrom.secretRef")
    return problems


def token_secrets(tree: Any) -> set[str]:
    """Names of the Secrets that RAY_AUTH_TOKEN env entries anywhere in `tree` read."""
    if isinstance(tree, list):
        return {name for item in tree for name in token_secrets(item)}
    if not isinstance(tree, dict):
        return set()
    if tree.get("name") == "RAY_AUTH_TOKEN" and "valueFrom" in tree:
        return {((tree["valueFrom"] or {}).get("secretKeyRef") or {}).get("name", "")}
    return {name for value in tree.values() for name in token_secrets(value)}


def token_secret_problems(where: str, tree: Any, cluster_spec: Any) -> list[str]:
    """Every Ray container reads the one token Secret that authOptions names."""
    expected = ((cluster_spec or {}).get("authOptions") or {}).get("secretName")
    found = token_secrets(tree)
    if expected and found != {expected}:
        return [
            f"{where}: RAY_AUTH_TOKEN must come from Secret {expected!r} only, got {sorted(found)}"
        ]
    return []


def raycluster_spec_problems(where: str, spec: Any) -> list[str]:
    if not isinstance(spec, dict):
        return [f"{where}: RayCluster spec is missing"]
    problems = []
    if spec.get("rayVersion") != RAY_VERSION:
        problems.append(f"{where}: rayVersion {spec.get('rayVersion')!r} != {RAY_VERSION}")
    auth = spec.get("authOptions") or {}
    if auth.get("mode") != "token" or not auth.get("secretName"):
        # Without it the operator has no token for its own dashboard calls.
        problems.append(f"{where}: authOptions must be {{mode: token, secretName: <Secret>}}")
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict) or not isinstance(head.get("rayStartParams"), dict):
        return problems + [f"{where}: headGroupSpec with rayStartParams is required"]
    problems += pod_problems(
        f"{where}/head", head.get("template"), ray_pod=True, object_storage=True
    )
    service_type = head.get("serviceType", "ClusterIP")
    if service_type != "ClusterIP" or head.get("enableIngress"):
        problems.append(
            f"{where}: head service must be ClusterIP without ingress, got {service_type!r}"
        )
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        return problems + [f"{where}: workerGroupSpecs must be a non-empty list"]
    for group in groups:
        problems += worker_group_problems(f"{where}/{group.get('groupName')}", group)
    if spec.get("enableInTreeAutoscaling"):
        autoscaler = {
            "name": "autoscaler",
            "image": CPU_IMAGE,
            **(spec.get("autoscalerOptions") or {}),
        }
        problems += auth_env_problems(f"{where}/autoscaler", autoscaler)
    return problems


def worker_group_problems(where: str, group: dict) -> list[str]:
    problems = []
    if not group.get("groupName") or not isinstance(group.get("rayStartParams"), dict):
        problems.append(f"{where}: worker group needs groupName and rayStartParams")
    sizes = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
    if not all(isinstance(n, int) for n in sizes) or not 0 <= sizes[0] <= sizes[1] <= sizes[2]:
        problems.append(f"{where}: need 0 <= minReplicas <= replicas <= maxReplicas, got {sizes}")
    return problems + pod_problems(where, group.get("template"), ray_pod=True, object_storage=True)


def ray_gpus(spec: dict) -> list[tuple[dict, int]]:
    """(worker group, GPUs per pod) for every worker group that has GPUs."""
    result = []
    for group in spec.get("workerGroupSpecs") or []:
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
        per_pod = sum(gpus(c)[1] for c in containers)
        if per_pod:
            result.append((group, per_pod))
    return result


def train_gpu_problems(where: str, spec: dict, options: dict[str, str]) -> list[str]:
    """The cluster holds exactly `--gpus` GPUs, in fixed-size groups."""
    groups = ray_gpus(spec)
    total = sum(group.get("replicas", 0) * per_pod for group, per_pod in groups)
    problems = []
    if str(total) != options.get("--gpus"):
        problems.append(
            f"{where}: worker GPUs add up to {total}, entrypoint asks "
            f"--gpus {options.get('--gpus')}"
        )
    for group, _ in groups:
        if not group.get("minReplicas") == group.get("replicas") == group.get("maxReplicas"):
            problems.append(f"{where}/{group.get('groupName')}: GPU group must be fixed-size")
    return problems


def tune_gpu_problems(where: str, spec: dict, options: dict[str, str]) -> list[str]:
    per_trial = int(options.get("--gpus-per-trial", "0"))
    groups = ray_gpus(spec)
    if not groups or any(per_pod < per_trial for _, per_pod in groups):
        return [f"{where}: every GPU pod needs >= --gpus-per-trial {per_trial} GPUs"]
    return []


GPU_RULES: dict[str, Callable[[str, dict, dict[str, str]], list[str]]] = {
    "jobs/train.py": train_gpu_problems,
    "jobs/tune.py": tune_gpu_problems,
}


def runtime_env_problems(where: str, runtime_env_yaml: str) -> list[str]:
    # In K8sJobMode the submitter pod runs `ray job submit` through a shell, so a
    # `$` here would be expanded there, not on the Ray nodes.
    if "$" in runtime_env_yaml:
        return [f"{where}: runtimeEnvYAML must not contain '$' (the submitter shell expands it)"]
    try:
        runtime_env = yaml.safe_load(runtime_env_yaml or "{}") or {}
    except yaml.YAMLError as err:
        return [f"{where}: runtimeEnvYAML is not valid YAML: {err}"]
    version = PYPROJECT["project"]["version"]
    problems = []
    if not re.fullmatch(
        rf"s3://[^/]+/.+/wbc-ray-{re.escape(version)}\.zip", str(runtime_env.get("working_dir"))
    ):
        problems.append(f"{where}: working_dir must be an s3:// wbc-ray-{version}.zip archive")
    if runtime_env.get("pip") != runtime_env_pip():
        problems.append(
            f"{where}: runtime_env pip must equal pyproject's dependencies "
            f"without ray: {runtime_env_pip()}"
        )
    return problems


def rayjob_problems(where: str, doc: dict) -> list[str]:
    spec = doc.get("spec") or {}
    entrypoint = spec.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        return [f"{where}: spec.entrypoint is required"]
    problems = raycluster_spec_problems(f"{where}/rayClusterSpec", spec.get("rayClusterSpec"))
    problems += token_secret_problems(where, spec, spec.get("rayClusterSpec"))
    if "$" in entrypoint:
        problems.append(
            f"{where}: entrypoint must not contain '$' (the submitter shell expands it)"
        )
    try:
        script, options = parse_entrypoint(entrypoint)
    except ValueError as err:
        return problems + [f"{where}: {err}"]
    if script not in ENTRYPOINT_OPTIONS:
        return problems + [f"{where}: {script!r} is not one of {sorted(ENTRYPOINT_OPTIONS)}"]
    missing = ENTRYPOINT_OPTIONS[script] - options.keys()
    if missing:
        problems.append(f"{where}: {script} is missing options {sorted(missing)}")
    if script in GPU_RULES and isinstance(spec.get("rayClusterSpec"), dict):
        problems += GPU_RULES[script](where, spec["rayClusterSpec"], options)
    problems += runtime_env_problems(where, spec.get("runtimeEnvYAML", ""))
    if spec.get("submitterPodTemplate") is not None:
        # The submitter runs `ray job submit`: a Ray image and the token, no object storage.
        problems += pod_problems(f"{where}/submitter", spec["submitterPodTemplate"], ray_pod=True)
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append(f"{where}: shutdownAfterJobFinishes must be true (no idle GPU clusters)")
    return problems


def cronjob_problems(where: str, doc: dict) -> list[str]:
    spec = doc.get("spec") or {}
    problems = []
    if not isinstance(spec.get("schedule"), str) or len(spec["schedule"].split()) != 5:
        problems.append(f"{where}: spec.schedule must be a 5-field cron expression")
    pod = (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")) or {}
    problems += pod_problems(f"{where}/jobTemplate", pod, ray_pod=False)
    if (pod.get("spec") or {}).get("restartPolicy") not in {"Never", "OnFailure"}:
        problems.append(f"{where}: a Job pod needs restartPolicy Never or OnFailure")
    return problems


def service_problems(where: str, doc: dict) -> list[str]:
    service_type = (doc.get("spec") or {}).get("type", "ClusterIP")
    if service_type in {"LoadBalancer", "NodePort"}:
        return [f"{where}: Service type {service_type} exposes the cluster; use ClusterIP"]
    return []


def no_problems(where: str, doc: dict) -> list[str]:
    return []


KIND_CHECKS: dict[tuple[str, str], Callable[[str, dict], list[str]]] = {
    ("ray.io/v1", "RayCluster"): lambda w, d: (
        raycluster_spec_problems(w, d.get("spec"))
        + token_secret_problems(w, d.get("spec"), d.get("spec"))
    ),
    ("ray.io/v1", "RayJob"): rayjob_problems,
    ("batch/v1", "CronJob"): cronjob_problems,
    ("v1", "Service"): service_problems,
    ("v1", "ConfigMap"): no_problems,
    ("v1", "ServiceAccount"): no_problems,
    ("rbac.authorization.k8s.io/v1", "Role"): no_problems,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): no_problems,
}


def manifest_problems(doc: dict) -> list[str]:
    meta = doc.get("metadata") or {}
    where = f"{doc.get('kind')}/{meta.get('name') or meta.get('generateName')}"
    check = KIND_CHECKS.get((doc.get("apiVersion"), doc.get("kind")))
    if check is None:
        return [
            f"{where}: unknown apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')} "
            "(Secrets are created with kubectl, never committed; no Ingress)"
        ]
    if not (meta.get("name") or meta.get("generateName")):
        return [f"{where}: metadata.name or metadata.generateName is required"]
    return check(where, doc)


def wiring_problems(docs: list[dict]) -> list[str]:
    """CronJob -> ServiceAccount -> RoleBinding -> Role (create rayjobs) -> ConfigMap."""
    problems = []
    names = {(d.get("kind"), (d.get("metadata") or {}).get("name")) for d in docs}
    for cron in (d for d in docs if d.get("kind") == "CronJob"):
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        account = pod.get("serviceAccountName")
        bindings = [
            d
            for d in docs
            if d.get("kind") == "RoleBinding"
            and any(
                s.get("kind") == "ServiceAccount" and s.get("name") == account
                for s in d.get("subjects", [])
            )
        ]
        roles = [
            d
            for b in bindings
            for d in docs
            if d.get("kind") == "Role" and d["metadata"]["name"] == b["roleRef"]["name"]
        ]
        can_create = any(
            "ray.io" in r.get("apiGroups", [])
            and "rayjobs" in r.get("resources", [])
            and "create" in r.get("verbs", [])
            for role in roles
            for r in role.get("rules", [])
        )
        if ("ServiceAccount", account) not in names or not can_create:
            problems.append(
                f"CronJob/{cron['metadata']['name']}: service account {account!r} "
                "must exist and be bound to a Role that can create ray.io rayjobs"
            )
        for volume in pod.get("volumes", []):
            config_map = (volume.get("configMap") or {}).get("name")
            if config_map and ("ConfigMap", config_map) not in names:
                problems.append(
                    f"CronJob/{cron['metadata']['name']}: ConfigMap {config_map!r} "
                    "is not defined in the same file"
                )
    return problems


def all_problems(docs: list[dict]) -> list[str]:
    return [p for doc in docs for p in manifest_problems(doc)] + wiring_problems(docs)


def entrypoints(docs: list[dict]) -> Iterator[str]:
    for doc in docs:
        if doc.get("kind") == "RayJob":
            yield parse_entrypoint(doc["spec"]["entrypoint"])[0]


def train_gpus() -> int:
    train = find(manifest("rayjob-train.yaml"), "RayJob")
    return int(parse_entrypoint(train["spec"]["entrypoint"])[1]["--gpus"])


# --------------------------------------------------------------------------------------
# Cluster-launcher configs: Ray's validation plus project rules
# --------------------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    """Make any socket use fail, so that a validation that goes online cannot pass."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during config validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def ray_validate(config: dict) -> dict:
    """What `ray up` checks first: merge the provider defaults, then the JSON schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def load_launcher(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def identity_problems(config: dict) -> list[str]:
    """Cloud identity comes from the machine (instance profile / service account)."""
    provider = config["provider"]
    if "gcp_credentials" in provider:
        return ["provider.gcp_credentials embeds credentials; use a service account"]
    workers = {
        name: t
        for name, t in config["available_node_types"].items()
        if name != config["head_node_type"]
    }
    field = {"aws": "IamInstanceProfile", "gcp": "serviceAccounts"}[provider["type"]]
    nodes = workers if provider["type"] == "gcp" else config["available_node_types"]
    return [
        f"node type {name}: node_config needs {field}"
        for name, t in nodes.items()
        if field not in t["node_config"]
    ]


def launcher_problems(config: dict, *, gpus_needed: int) -> list[str]:
    """Project rules on top of Ray's schema; `config` is the prepared (merged) config."""
    problems = identity_problems(config)
    docker = config.get("docker") or {}
    if docker.get("head_image") != CPU_IMAGE or docker.get("worker_image") != GPU_IMAGE:
        problems.append(f"docker images must be {CPU_IMAGE} (head) and {GPU_IMAGE} (workers)")
    if "--env RAY_AUTH_MODE=token" not in docker.get("run_options", []):
        problems.append("docker.run_options must set --env RAY_AUTH_MODE=token")
    if not any(remote.endswith("/.ray/auth_token") for remote in config["file_mounts"]):
        problems.append("file_mounts must ship the auth token to ~/.ray/auth_token")
    node_types = config["available_node_types"]
    if node_types[config["head_node_type"]]["resources"].get("CPU") != 0:
        problems.append("the head node type must advertise CPU: 0 (no work on the head)")
    if not any(
        t["resources"].get("GPU", 0) >= gpus_needed and t["max_workers"] >= 1
        for t in node_types.values()
    ):
        problems.append(f"no worker node type offers {gpus_needed} GPUs for `train --gpus`")
    head_start = " ".join(config["head_start_ray_commands"])
    if "--dashboard-host=127.0.0.1" not in head_start or "0.0.0.0" in head_start:
        problems.append("the dashboard must listen on 127.0.0.1 (use `ray dashboard`)")
    wheel = f"wbc_ray-{PYPROJECT['project']['version']}-py3-none-any.whl"
    for role in ("head_setup_commands", "worker_setup_commands"):
        commands = " ; ".join(config[role])
        if f"pip install --no-cache-dir /home/ray/wbc-ray-dist/{wheel}" not in commands:
            problems.append(f"{role} must pip install {wheel}")
        if "ray-wheels" in commands or "ray[default]" in commands:
            problems.append(f"{role} reinstalls Ray over the pinned image")
    return problems


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_ray_validation(path, no_network):
    ray_validate(load_launcher(path))


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_follows_project_rules(path):
    prepared = ray_validate(load_launcher(path))
    assert launcher_problems(prepared, gpus_needed=train_gpus()) == []


def _rename_global_max_workers(config):
    config["max_worker"] = config.pop("max_workers")


def _rename_node_type_max_workers(config):
    worker = next(
        t for n, t in config["available_node_types"].items() if n != config["head_node_type"]
    )
    worker["max_worker"] = worker.pop("max_workers")


def _head_type_not_defined(config):
    config["head_node_type"] = "no-such-node-type"


def _resources_not_integer(config):
    next(iter(config["available_node_types"].values()))["resources"]["GPU"] = "eight"


@pytest.mark.parametrize(
    "break_config",
    [
        _rename_global_max_workers,
        _rename_node_type_max_workers,
        _head_type_not_defined,
        _resources_not_integer,
    ],
)
@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_broken_launcher_config_fails_ray_validation(path, break_config, no_network):
    config = load_launcher(path)
    break_config(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(config)


def _set(path: list, value) -> Callable[[dict], None]:
    def mutate(config):
        target = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_set(["docker", "worker_image"], "rayproject/ray:2.59.0-py311-gpu"), "docker images"),
        (_set(["docker", "run_options"], []), "RAY_AUTH_MODE"),
        (
            _set(["head_start_ray_commands"], ["ray start --head --dashboard-host=0.0.0.0"]),
            "dashboard",
        ),
        (_set(["worker_setup_commands"], ["pip install wbc-ray"]), "pip install"),
        (_set(["file_mounts"], {}), "auth token"),
    ],
)
@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_project_rules_reject_broken_launcher_config(path, mutate, expected):
    prepared = ray_validate(load_launcher(path))
    mutate(prepared)
    problems = launcher_problems(prepared, gpus_needed=train_gpus())
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_without_big_gpu_node_is_rejected(path):
    prepared = ray_validate(load_launcher(path))
    for node_type in prepared["available_node_types"].values():
        node_type["resources"]["GPU"] = min(node_type["resources"].get("GPU", 0), 1)
    problems = launcher_problems(prepared, gpus_needed=train_gpus())
    assert any("GPUs for `train --gpus`" in p for p in problems), problems


# --------------------------------------------------------------------------------------
# KubeRay manifests
# --------------------------------------------------------------------------------------
def test_ray_pin_matches_installed_ray():
    assert pinned_ray_version() == RAY_VERSION


def test_every_expected_manifest_exists():
    assert {p.name for p in KUBERAY_MANIFESTS} >= {
        "raycluster.yaml",
        "rayjob-train.yaml",
        "rayjob-tune.yaml",
        "nightly-score-cronjob.yaml",
    }


@pytest.mark.parametrize("path", KUBERAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_passes_structural_check(path):
    assert all_problems(load_manifests(path)) == []


@pytest.mark.parametrize("path", KUBERAY_MANIFESTS, ids=lambda p: p.name)
def test_every_ray_image_is_pinned_to_installed_ray(path):
    images = re.findall(r"image:\s*[\"']?(rayproject/\S+?)[\"']?\s*$", path.read_text(), re.M)
    assert images, f"{path.name} names no rayproject image"
    assert set(images) <= {CPU_IMAGE, GPU_IMAGE}


def test_train_job_gpus_match_its_entrypoint():
    job = find(manifest("rayjob-train.yaml"), "RayJob")
    groups = ray_gpus(job["spec"]["rayClusterSpec"])
    assert sum(g["replicas"] * per_pod for g, per_pod in groups) == train_gpus() == 8


def test_nightly_cronjob_submits_the_scoring_rayjob():
    docs = manifest("nightly-score-cronjob.yaml")
    assert {d["kind"] for d in docs} >= {
        "CronJob",
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "RayJob",
    }
    template = find(docs, "ConfigMap")["data"]["rayjob.yaml"]
    assert f"name: wbc-ray-score-{RUN_DATE_PLACEHOLDER}" in template
    assert list(entrypoints(docs)) == ["jobs/nightly_score.py"]


def test_entrypoints_cover_exactly_the_three_job_scripts():
    used = [s for path in KUBERAY_MANIFESTS for s in entrypoints(load_manifests(path))]
    assert sorted(set(used)) == sorted(ENTRYPOINT_OPTIONS)
    documented = set(re.findall(r"python (jobs/\S+\.py)", CLUSTER_DOC.read_text()))
    assert documented == set(ENTRYPOINT_OPTIONS)


@pytest.mark.parametrize(
    "path", [*LAUNCHER_CONFIGS, *KUBERAY_MANIFESTS, CLUSTER_DOC], ids=lambda p: p.name
)
def test_no_literal_credentials(path):
    assert secret_literal_problems(path.read_text()) == []


def test_secret_scan_catches_literal_keys():
    key_id = "AKIA" + "Q" * 16  # built here so no key-shaped literal sits in the repo
    secret = "wJalr" + "x" * 35
    assert secret_literal_problems(f"id: {key_id}")
    assert secret_literal_problems(f"aws_secret_access_key: {secret}")
    assert secret_literal_problems(f'"AWS_SECRET_ACCESS_KEY": "{secret}"')
    assert not secret_literal_problems("--from-literal=AWS_SECRET_ACCESS_KEY=<your-secret-key>")


# In-memory breakages of real manifests: each must be reported.
def _worker_container(docs: list[dict], kind: str = "RayJob") -> dict:
    doc = find(docs, kind)
    spec = doc["spec"]["rayClusterSpec"] if kind == "RayJob" else doc["spec"]
    return spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


def _head(docs: list[dict], kind: str = "RayJob") -> dict:
    doc = find(docs, kind)
    spec = doc["spec"]["rayClusterSpec"] if kind == "RayJob" else doc["spec"]
    return spec["headGroupSpec"]


def _wrong_image_tag(docs):
    _worker_container(docs)["image"] = "rayproject/ray:2.59.0-py311-gpu"


def _cpu_image_on_gpu_worker(docs):
    _worker_container(docs)["image"] = CPU_IMAGE


def _gpu_count_mismatch(docs):
    group = find(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group.update(replicas=2, minReplicas=2, maxReplicas=2)


def _gpu_requests_differ_from_limits(docs):
    _worker_container(docs)["resources"]["requests"][GPU] = "4"


def _load_balancer_head(docs):
    _head(docs)["serviceType"] = "LoadBalancer"


def _node_port_service(docs):
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "dash"},
            "spec": {"type": "NodePort", "ports": [{"port": 8265}]},
        }
    )


def _committed_secret(docs):
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "wbc-ray-s3"},
            "stringData": {"AWS_ACCESS_KEY_ID": "x"},
        }
    )


def _no_auth_mode_on_head(docs):
    container = _head(docs)["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "RAY_AUTH_MODE"]


def _no_auth_mode_on_submitter(docs):
    submitter = find(docs, "RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    submitter["env"] = [e for e in submitter["env"] if e["name"] != "RAY_AUTH_MODE"]


def _literal_s3_key(docs):
    _worker_container(docs)["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"})


def _no_object_storage_secret(docs):
    _worker_container(docs).pop("envFrom")


def _unknown_job_script(docs):
    job = find(docs, "RayJob")["spec"]
    job["entrypoint"] = job["entrypoint"].replace("jobs/train.py", "jobs/train_v2.py")


def _missing_option(docs):
    job = find(docs, "RayJob")["spec"]
    job["entrypoint"] = job["entrypoint"].replace("--epochs 150", "")


def _dollar_in_runtime_env(docs):
    find(docs, "RayJob")["spec"]["runtimeEnvYAML"] += "env_vars: {HOME_DIR: $HOME}\n"


def _dependency_drift(docs):
    job = find(docs, "RayJob")["spec"]
    job["runtimeEnvYAML"] = job["runtimeEnvYAML"].replace('  - "torch==2.14.1"\n', "")


def _missing_worker_groups(docs):
    find(docs, "RayJob")["spec"]["rayClusterSpec"].pop("workerGroupSpecs")


def _missing_ray_start_params(docs):
    _head(docs).pop("rayStartParams")


def _autoscaler_without_token(docs):
    find(docs, "RayCluster")["spec"]["autoscalerOptions"].pop("env")


def _no_auth_options(docs):
    find(docs, "RayJob")["spec"]["rayClusterSpec"].pop("authOptions")


def _submitter_token_from_other_secret(docs):
    submitter = find(docs, "RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    env_entry(submitter, "RAY_AUTH_TOKEN")["valueFrom"]["secretKeyRef"]["name"] = "other"


def _cron_without_schedule(docs):
    find(docs, "CronJob")["spec"].pop("schedule")


def _cron_role_cannot_create(docs):
    find(docs, "Role")["rules"][0]["verbs"] = ["get"]


@pytest.mark.parametrize(
    "file, mutate, expected",
    [
        ("rayjob-train.yaml", _wrong_image_tag, "image"),
        ("rayjob-train.yaml", _cpu_image_on_gpu_worker, "GPU container must use"),
        ("rayjob-train.yaml", _gpu_count_mismatch, "worker GPUs add up to 16"),
        ("rayjob-train.yaml", _gpu_requests_differ_from_limits, "requests 4 != limits 8"),
        ("rayjob-train.yaml", _load_balancer_head, "ClusterIP"),
        ("rayjob-train.yaml", _node_port_service, "NodePort"),
        ("rayjob-train.yaml", _committed_secret, "Secrets are created with kubectl"),
        ("rayjob-train.yaml", _no_auth_mode_on_head, "RAY_AUTH_MODE"),
        ("rayjob-train.yaml", _no_auth_mode_on_submitter, "submitter"),
        ("rayjob-train.yaml", _no_auth_options, "authOptions"),
        ("rayjob-train.yaml", _submitter_token_from_other_secret, "'other'"),
        ("rayjob-train.yaml", _literal_s3_key, "AWS_SECRET_ACCESS_KEY is a literal"),
        ("rayjob-train.yaml", _no_object_storage_secret, "envFrom.secretRef"),
        ("rayjob-train.yaml", _unknown_job_script, "jobs/train_v2.py"),
        ("rayjob-train.yaml", _missing_option, "--epochs"),
        ("rayjob-train.yaml", _dollar_in_runtime_env, "'$'"),
        ("rayjob-tune.yaml", _dependency_drift, "pyproject's dependencies"),
        ("rayjob-tune.yaml", _missing_worker_groups, "workerGroupSpecs"),
        ("rayjob-tune.yaml", _missing_ray_start_params, "rayStartParams"),
        ("raycluster.yaml", _autoscaler_without_token, "autoscaler"),
        ("nightly-score-cronjob.yaml", _cron_without_schedule, "schedule"),
        ("nightly-score-cronjob.yaml", _cron_role_cannot_create, "create ray.io rayjobs"),
        ("nightly-score-cronjob.yaml", _wrong_image_tag, "image"),
    ],
)
def test_checker_rejects_broken_manifest(file, mutate, expected):
    docs = manifest(file)
    assert all_problems(docs) == []
    mutate(docs)
    problems = all_problems(docs)
    assert any(expected in p for p in problems), problems
