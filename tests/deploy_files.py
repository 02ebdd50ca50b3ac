"""Readers of the deployment files for the deployment tests: Dockerfile, compose.yaml, k8s/.

Not a test module: ``tests/test_deploy_manifests.py`` (k8s/) and ``tests/test_deploy_compose.py``
(Dockerfile, compose, agreement with the code) import it. Everything is parsed once per session.
"""
from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SERVE_CONFIG = ROOT / "services" / "serve_config.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
KUBERAY_SCHEMA = Path(__file__).resolve().parent / "schemas" / "kuberay-v1.json"
IMAGE = "gpt-journey"
NAMESPACE = "gpt-journey"
SECRET = "journey-secrets"
RAY_KINDS = ("RayCluster", "RayJob", "RayService")


@functools.cache
def load_all(path: Path) -> list[dict]:
    """Every document of a YAML file (the tests only read them)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = [d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader) if d is not None]
    for d in docs:
        assert isinstance(d, dict), f"{path}: a YAML document that is not a mapping: {d!r:.80}"
    return docs


def dockerfile() -> tuple[dict[str, str], dict[str, str], str]:
    """(ARG defaults, ENV values, text) of the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", text)
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", joined, re.M))
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.+)$", joined, re.M):
        env.update(re.findall(r"(\w+)=(\S+)", line))
    return args, env, joined


def image() -> str:
    return f"{IMAGE}:{dockerfile()[0]['JOURNEY_VERSION']}"


def env_example() -> dict[str, str]:
    """KEY=value lines of .env.example, commented-out optional ones included (value '' when unset)."""
    found = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(\S*)", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M)
    return dict(found)


# --------------------------------------------------------------------------------------------
# k8s/: files, objects, kustomize


def k8s_files() -> list[Path]:
    """Every manifest file under k8s/ (kustomization files are not objects)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def objects() -> list[tuple[Path, dict]]:
    """Every Kubernetes object written out under k8s/ (the stage RayJobs are patches: see stage_jobs)."""
    return [(p, d) for p in k8s_files() for d in load_all(p)]


def of_kind(kind: str, objs: list[tuple[Path, dict]] | None = None) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in (objects() if objs is None else objs) if d["kind"] == kind]


def cluster_spec(doc: dict) -> dict | None:
    """The Ray cluster spec inside a RayCluster, RayJob or RayService."""
    spec = doc["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig")}.get(doc["kind"])


def ray_cluster_specs(objs: list[tuple[Path, dict]] | None = None) -> Iterator[tuple[str, dict]]:
    for path, doc in objects() if objs is None else objs:
        if doc["kind"] in RAY_KINDS and cluster_spec(doc):
            yield f"{path.name}:{doc['metadata']['name']}", cluster_spec(doc)


def ray_groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs") or []]


def pod_templates(objs: list[tuple[Path, dict]] | None = None) -> Iterator[tuple[str, dict]]:
    """(where, pod template) of everything that runs pods: workloads, Ray groups, submitters."""
    objs = objects() if objs is None else objs
    for path, doc in objs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            yield f"{path.name}:{doc['metadata']['name']}", doc["spec"]["template"]
    for where, spec in ray_cluster_specs(objs):
        for group_name, group in ray_groups(spec):
            yield f"{where} {group_name}", group["template"]
    for path, doc in of_kind("RayJob", objs):
        if doc["spec"].get("submitterPodTemplate"):
            yield f"{path.name}:{doc['metadata']['name']} submitter", doc["spec"]["submitterPodTemplate"]


def containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return list(spec.get("containers") or []) + list(spec.get("initContainers") or [])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def stage_jobs() -> list[tuple[Path, str, str]]:
    """(kustomization dir, RayJob name, entrypoint) of every run under k8s/jobs/, base included.

    Read from the patches themselves, so it needs no kustomize; test_kustomize_renders checks that
    kustomize produces the same.
    """
    base = of_kind("RayJob")
    assert len(base) == 1, f"one RayJob base expected under k8s/jobs/, found {[str(p) for p, _ in base]}"
    base_path, base_job = base[0]
    out = [(base_path.parent, base_job["metadata"]["name"], base_job["spec"]["entrypoint"])]
    for kdir in kustomizations():
        if kdir.parent != K8S / "jobs" or kdir == base_path.parent:
            continue
        kust = load_all(kdir / "kustomization.yaml")[0]
        ops = [op for p in kust.get("patches") or [] for op in yaml.safe_load(p["patch"])]
        values = {op["path"]: op.get("value") for op in ops if op["op"] == "replace"}
        out.append((kdir, values.get("/metadata/name"), values.get("/spec/entrypoint")))
    return out


def kubectl() -> str | None:
    return shutil.which("kubectl")


@functools.cache
def kustomize(directory: Path) -> list[dict]:
    """The objects ``kubectl kustomize DIR`` renders (AssertionError with kustomize's message on failure)."""
    proc = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT)} failed:\n{proc.stderr[-2000:]}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@functools.cache
def kuberay_schema() -> dict:
    return json.loads(KUBERAY_SCHEMA.read_text(encoding="utf-8"))


def kuberay_errors(doc: dict) -> list[str]:
    """Where ``doc`` (a RayCluster, RayJob or RayService) breaks the vendored KubeRay schema."""
    import jsonschema
    schema = {**kuberay_schema(), "$ref": f"#/$defs/{doc['kind']}"}
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in validator.iter_errors(doc)]


def serve_config_of(rayservice: dict) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])
