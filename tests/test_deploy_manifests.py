"""The deployment files agree with each other and with the code: Dockerfile, compose.yaml, k8s/.

Checks, without Docker or a cluster:
- Dockerfile: its JOURNEY_VERSION is pyproject's version and the one image tag used everywhere;
  its RAY_VERSION is the installed Ray and every KubeRay `rayVersion`; what it COPYs exists.
- compose.yaml: every service has an image or a build, named volumes are declared (and used),
  depends_on targets exist (with a healthcheck where the condition needs one), ports and
  environment are well-formed, `${...}` interpolations are closed, the job service submits to the
  head's dashboard port, and everything that talks to Ray carries the auth token.
- k8s/: every document has apiVersion, kind and a valid metadata.name in the namespace;
  kustomization.yaml lists exactly the platform files (not the run-once RayJobs, not examples);
  RayCluster/RayJob fields are ones KubeRay knows, with the settings it would reject ruled out;
  every RayJob entrypoint names a real `ray_jobs/<module>.py` with presets that exist and parse;
  Ray pods use the image, the auth Secret and the runs volume; volumes, claims, secrets, Service
  selectors and named ports resolve; with `kubernetes-validate` installed, the core objects and
  every pod template also pass the Kubernetes JSON schema (strict).

Not checked here: that the image builds or that pods start; that needs Docker or a cluster.
"""
from __future__ import annotations

import functools
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE = "gpt-journey"
NAMESPACE = "gpt-journey"

# Fields of the KubeRay ray.io/v1 types (union over KubeRay 1.1 - 1.7): a misspelt optional field
# is silently dropped by the API server's pruning, so catch it here.
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
               "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule"}
RAYCLUSTER_SPEC = {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
                   "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
                   "gcsFaultToleranceOptions", "authOptions", "upgradeStrategy"}
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress", "resources", "labels"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                "scaleStrategy", "numOfHosts", "suspend", "idleTimeoutSeconds", "resources", "labels"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# --------------------------------------------------------------------------------------------
# loading


@functools.cache
def _load_all(path: Path) -> list[dict]:
    """Every document of a YAML file (parsed once per test session; the tests only read them)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = [d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader) if d is not None]
    for d in docs:
        assert isinstance(d, dict), f"{path.name}: a YAML document that is not a mapping: {d!r:.80}"
    return docs


def _dockerfile() -> tuple[dict[str, str], dict[str, str], str]:
    """(ARG defaults, ENV values, text) of the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", text)
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", joined, re.M))
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.+)$", joined, re.M):
        env.update(re.findall(r"(\w+)=(\S+)", line))
    return args, env, joined


def _version() -> str:
    return _dockerfile()[0]["JOURNEY_VERSION"]


def _image() -> str:
    return f"{IMAGE}:{_version()}"


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.iterdir() if p.suffix in (".yaml", ".yml"))


def _k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in _k8s_files() for d in _load_all(p)]


def _objects() -> list[tuple[Path, dict]]:
    """Every Kubernetes object (the kustomization itself is not one)."""
    return [(p, d) for p, d in _k8s_docs() if d.get("kind") != "Kustomization"]


def _of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _objects() if d["kind"] == kind]


def _ray_cluster_specs() -> Iterator[tuple[str, dict]]:
    for path, doc in _objects():
        if doc["kind"] == "RayCluster":
            yield f"{path.name}:{doc['metadata']['name']}", doc["spec"]
        elif doc["kind"] == "RayJob" and doc["spec"].get("rayClusterSpec"):
            yield f"{path.name}:{doc['metadata']['name']}", doc["spec"]["rayClusterSpec"]
        elif doc["kind"] == "RayService":
            yield f"{path.name}:{doc['metadata']['name']}", doc["spec"]["rayClusterConfig"]


def _ray_node_templates() -> Iterator[tuple[str, dict]]:
    """(where, pod template) of every Ray head and worker group."""
    for where, spec in _ray_cluster_specs():
        yield f"{where} head", spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs") or []:
            yield f"{where} worker group {group.get('groupName')}", group["template"]


def _pod_templates() -> Iterator[tuple[str, dict]]:
    """(where, pod template) of everything that runs pods: workloads, Ray groups, submitters."""
    for path, doc in _objects():
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            yield f"{path.name}:{doc['metadata']['name']}", doc["spec"]["template"]
    yield from _ray_node_templates()
    for path, doc in _of_kind("RayJob"):
        if doc["spec"].get("submitterPodTemplate"):
            yield f"{path.name}:{doc['metadata']['name']} submitter", doc["spec"]["submitterPodTemplate"]


def _containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return list(spec.get("containers") or []) + list(spec.get("initContainers") or [])


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_version_is_pyprojects():
    args, _, text = _dockerfile()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert args.get("JOURNEY_VERSION") == pyproject["project"]["version"], \
        "Dockerfile ARG JOURNEY_VERSION must equal pyproject.toml's version (it is the image tag)"
    assert re.search(r'org\.opencontainers\.image\.version="\$\{JOURNEY_VERSION\}"', text), \
        "the image's version LABEL should come from ARG JOURNEY_VERSION"


def test_dockerfile_ray_is_the_installed_ray():
    ray = pytest.importorskip("ray")
    args, _, text = _dockerfile()
    assert args.get("RAY_VERSION") == ray.__version__, \
        f"Dockerfile RAY_VERSION {args.get('RAY_VERSION')} != installed ray {ray.__version__}: bump one of them"
    assert re.search(r"ray\[[\w,]+\]==\$\{RAY_VERSION\}", text), "the image must pin Ray to RAY_VERSION"


def test_dockerfile_copies_what_exists_and_what_jobs_need():
    _, env, text = _dockerfile()
    sources = []
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        assert "--from" not in line, "multi-stage COPY: extend this test"
        sources += parts[:-1]
    assert sources, "the Dockerfile copies nothing"
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    for needed in ("pyproject.toml", "shared", "ray_jobs", "services", "configs"):
        assert needed in sources, f"the image needs {needed} (jobs load presets from configs/)"
    # shared/config finds configs/ next to the package: a non-editable install would lose them.
    assert re.search(r"pip install[^\n]*\s-e\s+\.", text), "install the project editable in /app (see Dockerfile)"
    assert env.get("JOURNEY_RUNS", "").startswith("/"), "the image should set JOURNEY_RUNS to an absolute path"
    # KubeRay's default probes exec `wget ... | grep success` inside the Ray containers.
    assert re.search(r"apt-get install[^\n]*\bwget\b", text), "KubeRay's health probes need wget in the image"


# --------------------------------------------------------------------------------------------
# image tags


def test_every_reference_to_our_image_uses_the_dockerfile_tag():
    version = _version()
    for path in [COMPOSE, *_k8s_files()]:
        text = path.read_text(encoding="utf-8")
        for tag in re.findall(rf"(?<![\w/.-]){IMAGE}:([\w.-]+)", text):
            assert tag == version or tag.startswith(f"{version}-"), \
                f"{path.name}: image {IMAGE}:{tag}, expected {IMAGE}:{version} (or a -variant of it)"
    images = [c["image"] for _, t in _pod_templates() for c in _containers(t)
              if c["image"].split(":")[0].endswith(IMAGE)]
    assert images and set(images) == {_image()}, f"k8s containers of our image: {sorted(set(images))}"


# --------------------------------------------------------------------------------------------
# compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict:
    docs = _load_all(COMPOSE)
    assert len(docs) == 1, "compose.yaml holds one document"
    return docs[0]


def _depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    return {d: {} for d in deps} if isinstance(deps, list) else deps


def _compose_env(service: dict) -> dict[str, object]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def _strings(node) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def test_compose_services_have_an_image_or_a_build(compose):
    services = compose.get("services") or {}
    assert {"ray-head", "redis", "qdrant", "journey"} <= set(services), sorted(services)
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"compose service {name} has neither image nor build"
        if svc.get("build"):
            assert svc.get("image") == _image(), f"{name} builds our image: tag it {_image()}"


def test_compose_named_volumes_are_declared_and_used(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes") or []:
            source = vol.get("source") if isinstance(vol, dict) else vol.split(":")[0]
            if isinstance(vol, dict) and vol.get("type") not in (None, "volume"):
                continue
            if source and not source.startswith((".", "/", "~", "$")):     # a named volume, not a bind mount
                assert source in declared, f"service {name} mounts volume {source!r}, not declared under volumes:"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    assert {"runs", "redis-data", "qdrant-storage"} <= declared


def test_compose_depends_on_targets_exist(compose):
    services = compose["services"]
    for name, svc in services.items():
        for target, how in _depends_on(svc).items():
            assert target in services, f"{name} depends on unknown service {target!r}"
            assert target != name, f"{name} depends on itself"
            if (how or {}).get("condition") == "service_healthy":
                assert services[target].get("healthcheck"), \
                    f"{name} waits for {target} to be healthy: give {target} a healthcheck"


def test_compose_ports_and_environment_are_well_formed(compose):
    # [IP:][HOST:]CONTAINER[/PROTO], each port a number or a range of numbers.
    pattern = re.compile(r"^(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(?:([\d-]+):)?([\d-]+)(?:/(tcp|udp))?$")
    for name, svc in compose["services"].items():
        for p in svc.get("ports") or []:
            if isinstance(p, dict):
                assert isinstance(p.get("target"), int), f"{name}: long-form port without a numeric target"
                continue
            assert isinstance(p, str), f"{name}: quote port {p!r} (YAML reads 60:60 as a base-60 number)"
            m = pattern.match(p)
            assert m, f"{name}: malformed port mapping {p!r}"
            numbers = [n for part in m.group(2, 3) if part for n in part.split("-")]
            assert all(n.isdigit() and 0 < int(n) < 65536 for n in numbers), f"{name}: bad port in {p!r}"
        for key, value in _compose_env(svc).items():
            assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(key)), f"{name}: bad environment name {key!r}"
            assert value is None or isinstance(value, (str, int, float, bool)), f"{name}: {key} must be a scalar"


def test_compose_interpolations_are_closed(compose):
    # `$$` is a literal dollar; anything else after `$` must be NAME or {NAME...} with the brace closed.
    for s in _strings(compose):
        rest = s.replace("$$", "")
        for m in re.finditer(r"\$", rest):
            tail = rest[m.end():]
            assert re.match(r"[A-Za-z_]\w*|\{[A-Za-z_]\w*([:?\-+][^}]*)?\}", tail), \
                f"unclosed or malformed interpolation in compose.yaml: {s!r}"


def test_compose_job_submits_to_the_head_with_the_token(compose):
    services = compose["services"]
    job = services["journey"]
    assert "job" in (job.get("profiles") or []), "the one-shot journey service must not start with `compose up`"
    argv = list(job.get("entrypoint") or []) + list(job.get("command") or [])
    assert argv[:3] == ["ray", "job", "submit"], f"journey should submit a Ray job, got {argv}"
    address = argv[argv.index("--address") + 1]
    m = re.match(r"^http://([\w.-]+):(\d+)$", address)
    assert m, f"--address should be http://<service>:<dashboard port>, got {address}"
    head, port = m.group(1), m.group(2)
    assert head in services and head in _depends_on(job), f"journey must depend on {head}"
    head_cmd = services[head]["command"]
    head_cmd = head_cmd if isinstance(head_cmd, str) else " ".join(head_cmd)
    assert "ray start --head" in head_cmd and "--block" in head_cmd, f"{head} should run `ray start --head --block`"
    assert f"--dashboard-port={port}" in head_cmd and "--dashboard-host=0.0.0.0" in head_cmd, \
        f"{head} must serve the dashboard/job API on 0.0.0.0:{port} for the journey service"
    assert argv[argv.index("--") + 1:][:2] in (["journey", "run"], ["python", "-m"]), argv
    for name, svc in services.items():
        if svc.get("image") == _image():
            env = _compose_env(svc)
            assert env.get("RAY_AUTH_MODE") == "token", f"{name}: Ray 2.60 job API needs RAY_AUTH_MODE=token"
            assert "RAY_AUTH_TOKEN" in str(env.get("RAY_AUTH_TOKEN")), f"{name}: pass RAY_AUTH_TOKEN through"


def test_compose_redis_keeps_an_append_only_file(compose):
    cmd = compose["services"]["redis"]["command"]
    cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
    assert "--appendonly yes" in cmd, "the bus relies on AOF to keep pending entries across restarts"


# --------------------------------------------------------------------------------------------
# k8s/: identity, kustomization


def test_k8s_documents_have_kind_name_and_namespace():
    objects = _objects()
    assert objects, "no Kubernetes objects under k8s/"
    for path, doc in objects:
        for key in ("apiVersion", "kind", "metadata"):
            assert doc.get(key), f"{path.name}: a document without {key}"
        name = doc["metadata"].get("name")
        assert name and DNS1123.match(name) and len(name) <= 63, f"{path.name}: bad metadata.name {name!r}"
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], f"{path.name}: {doc['kind']} is cluster-scoped"
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, \
                f"{path.name}: {doc['kind']}/{name} should say namespace: {NAMESPACE} (kubectl create -f works too)"
        if doc["kind"] in ("RayCluster", "RayJob", "RayService"):
            limit = {"RayCluster": 53, "RayJob": 47, "RayService": 47}[doc["kind"]]   # KubeRay's limits
            assert DNS1035.match(name) and len(name) <= limit, f"{path.name}: KubeRay rejects name {name!r}"
    names = [(d["kind"], d["metadata"]["name"]) for _, d in objects]
    assert len(names) == len(set(names)), f"duplicate objects: {sorted(n for n in names if names.count(n) > 1)}"
    assert [d["metadata"]["name"] for _, d in _of_kind("Namespace")] == [NAMESPACE]


def _kustomization() -> dict:
    return _load_all(K8S / "kustomization.yaml")[0]


def test_kustomization_lists_exactly_the_platform_files():
    kust = _kustomization()
    assert kust.get("kind") == "Kustomization" and kust.get("namespace") == NAMESPACE
    listed = kust.get("resources") or []
    assert len(listed) == len(set(listed)), "a resource listed twice"
    for entry in listed:
        assert (K8S / entry).is_file(), f"kustomization lists {entry}, which does not exist"
    # Runs (RayJobs) are created one at a time with `kubectl create -f`; examples are never applied.
    runs = {p.name for p in _k8s_files() if _load_all(p) and all(d.get("kind") == "RayJob" for d in _load_all(p))}
    examples = {p.name for p in _k8s_files() if p.name.endswith(".example.yaml")}
    platform = {p.name for p in _k8s_files()} - {"kustomization.yaml"} - runs - examples
    assert set(listed) == platform, \
        f"kustomization.yaml resources: missing {sorted(platform - set(listed))}, " \
        f"extra {sorted(set(listed) - platform)}"
    assert {"rayjob-tokenizer.yaml", "rayjob-pretrain.yaml", "rayjob-cpt.yaml", "rayjob-journey.yaml"} <= runs
    for path in _k8s_files():
        kinds = {d.get("kind") for d in _load_all(path)}
        assert "RayJob" not in kinds or kinds == {"RayJob"}, f"{path.name}: keep RayJobs in files of their own"


# --------------------------------------------------------------------------------------------
# k8s/: KubeRay


def test_ray_versions_match_the_installed_ray_and_the_image():
    ray = pytest.importorskip("ray")
    specs = list(_ray_cluster_specs())
    assert specs, "no RayCluster/RayJob cluster specs found"
    for where, spec in specs:
        assert str(spec.get("rayVersion")) == ray.__version__ == _dockerfile()[0]["RAY_VERSION"], \
            f"{where}: rayVersion {spec.get('rayVersion')!r}, installed ray {ray.__version__}"


def test_kuberay_fields_are_known_and_consistent():
    for where, spec in _ray_cluster_specs():
        assert set(spec) <= RAYCLUSTER_SPEC, f"{where}: unknown RayCluster fields {sorted(set(spec) - RAYCLUSTER_SPEC)}"
        head = spec["headGroupSpec"]
        assert set(head) <= HEAD_GROUP, f"{where}: unknown headGroupSpec fields {sorted(set(head) - HEAD_GROUP)}"
        groups = spec.get("workerGroupSpecs") or []
        assert len({g["groupName"] for g in groups}) == len(groups), f"{where}: duplicate groupName"
        for g in groups:
            assert set(g) <= WORKER_GROUP, f"{where}: unknown worker group fields {sorted(set(g) - WORKER_GROUP)}"
            assert g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 2**31), \
                f"{where}/{g['groupName']}: need minReplicas <= replicas <= maxReplicas"
        for group in [head, *groups]:
            params = group.get("rayStartParams") or {}
            assert all(isinstance(v, str) for v in params.values()), \
                f"{where}: rayStartParams values are strings for KubeRay (quote them): {params}"
            assert not (set(params) & {"num-cpus", "num-gpus", "memory"} and group.get("resources")), \
                f"{where}: set Ray resources in rayStartParams or `resources`, not both"
    for path, job in _of_kind("RayJob"):
        spec, name = job["spec"], job["metadata"]["name"]
        assert set(spec) <= RAYJOB_SPEC, f"{name}: unknown RayJob fields {sorted(set(spec) - RAYJOB_SPEC)}"
        assert bool(spec.get("rayClusterSpec")) != bool(spec.get("clusterSelector")), \
            f"{name}: give exactly one of rayClusterSpec and clusterSelector"
        assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
        # The rules KubeRay's webhook and controller enforce (ray-operator utils/validation.go).
        if spec.get("ttlSecondsAfterFinished", 0) > 0 or spec.get("suspend"):
            assert spec.get("shutdownAfterJobFinishes") is True, \
                f"{name}: ttlSecondsAfterFinished and suspend need shutdownAfterJobFinishes: true"
        if spec.get("clusterSelector"):
            assert spec.get("submissionMode") != "SidecarMode" and not spec.get("suspend")
        assert spec.get("entrypoint"), f"{name}: no entrypoint"


def _entrypoints() -> list[tuple[str, list[str]]]:
    out = []
    for _, job in _of_kind("RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:2] == ["python", "-m"] and argv[2].startswith("ray_jobs."), \
            f"{job['metadata']['name']}: entrypoint should be `python -m ray_jobs.<stage> ...`, got {argv}"
        out.append((argv[2].split(".", 1)[1], argv[3:]))
    return out


def _stages_of_journey() -> tuple[str, ...]:
    from ray_jobs.journey import STAGES
    return STAGES


def test_rayjob_entrypoints_name_real_modules_and_presets():
    entrypoints = _entrypoints()
    assert {m for m, _ in entrypoints} >= {"tokenizer", "pretrain", "cpt", "journey"}
    for module, args in entrypoints:
        assert (ROOT / "ray_jobs" / f"{module}.py").is_file(), f"ray_jobs/{module}.py does not exist"
        if "--config" in args:
            preset = args[args.index("--config") + 1]
            assert (ROOT / "configs" / module / f"{preset}.yaml").is_file(), \
                f"configs/{module}/{preset}.yaml is missing"
        presets = [a.split("=", 1)[1] for a in args if a.startswith("preset=")]
        for preset in presets:
            for stage in _stages_of_journey():
                assert (ROOT / "configs" / stage / f"{preset}.yaml").is_file(), \
                    f"configs/{stage}/{preset}.yaml is missing"
        assert "--config" in args or presets, f"ray_jobs.{module}: name the preset explicitly"
        assert any(a.startswith("run=") for a in args), f"ray_jobs.{module}: name the run, so the stages chain"
    for path, job in _of_kind("RayJob"):
        # The header says how to run it by hand; it must be the command the RayJob runs.
        assert f"#   {job['spec']['entrypoint']}\n" in path.read_text(encoding="utf-8"), \
            f"{path.name}: the header comment's command differs from spec.entrypoint"
    runs = {a for m, args in entrypoints if m != "journey" for a in args if a.startswith("run=")}
    assert len(runs) == 1, f"the single-stage RayJobs must share one run to find each other's artifacts: {runs}"


class _Parsed(Exception):
    """Raised instead of running the job once its config has been parsed."""


def test_rayjob_entrypoints_parse_with_the_jobs_own_parser(monkeypatch):
    """Each entrypoint's arguments load into the job's typed config: presets, overrides, keys."""
    import importlib

    from ray_jobs import _args
    real_parse = _args.parse_job_args

    def parse_then_stop(*args, **kwargs):
        raise _Parsed(real_parse(*args, **kwargs))

    for module_name, args in _entrypoints():
        module = importlib.import_module(f"ray_jobs.{module_name}")
        if module_name == "journey":
            def stop(jc, module=module):
                raise _Parsed([module._stage_config(stage, jc, jc.run) for stage in jc.stages])
            monkeypatch.setattr(module, "run_journey", stop)
        else:
            # Entry points parse through _args.parse_job_args, directly or via _args.stage_main.
            monkeypatch.setattr(_args, "parse_job_args", parse_then_stop)
            if hasattr(module, "parse_job_args"):
                monkeypatch.setattr(module, "parse_job_args", parse_then_stop)
        with pytest.raises(_Parsed):
            code = module.main(list(args))
            pytest.fail(f"python -m ray_jobs.{module_name} {' '.join(args)} exited {code} instead of parsing")


# --------------------------------------------------------------------------------------------
# k8s/: pods, volumes, secrets, services


def _secrets() -> dict[str, set[str]]:
    out = {}
    for _, doc in _of_kind("Secret"):
        out[doc["metadata"]["name"]] = set(doc.get("data") or {}) | set(doc.get("stringData") or {})
    return out


def _ray_token_wired(where: str, template: dict, operator_auth: bool) -> None:
    """RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from a Secret, unless KubeRay's authOptions sets them."""
    if operator_auth:
        return
    env = _env(_containers(template)[0])
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
    assert env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef"), \
        f"{where}: RAY_AUTH_TOKEN must come from a Secret"


def test_ray_pods_share_the_image_the_token_and_the_runs_volume():
    runs_dir = _dockerfile()[1]["JOURNEY_RUNS"]
    runs_claims = set()
    for where, spec in _ray_cluster_specs():
        operator_auth = (spec.get("authOptions") or {}).get("mode") == "token"
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs") or []]
        for group_name, group in groups:
            template, label = group["template"], f"{where} {group_name}"
            assert _containers(template)[0]["image"] == _image(), f"{label}: runs another image"
            _ray_token_wired(label, template, operator_auth)
            volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
            mounts = {m["mountPath"]: m["name"] for m in _containers(template)[0].get("volumeMounts") or []}
            assert runs_dir in mounts, f"{label}: mount the runs volume at {runs_dir} (the image's JOURNEY_RUNS)"
            claim = (volumes.get(mounts[runs_dir]) or {}).get("persistentVolumeClaim", {}).get("claimName")
            assert claim, f"{label}: {runs_dir} must be a PersistentVolumeClaim, shared by every Ray pod"
            runs_claims.add(claim)
    assert len(runs_claims) == 1, f"every Ray pod must mount the same runs volume: {runs_claims}"
    pvc = next(d for _, d in _of_kind("PersistentVolumeClaim") if d["metadata"]["name"] in runs_claims)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "head and workers on different nodes all write runs/"
    # K8sJobMode's default submitter pod knows nothing of the token: ours must carry it.
    for path, job in _of_kind("RayJob"):
        spec = job["spec"]
        if spec.get("submissionMode", "K8sJobMode") != "K8sJobMode":
            continue
        operator_auth = ((spec.get("rayClusterSpec") or {}).get("authOptions") or {}).get("mode") == "token"
        template = spec.get("submitterPodTemplate")
        assert template or operator_auth, f"{path.name}: the submitter needs a submitterPodTemplate with the token"
        if template:
            assert _containers(template)[0]["image"] == _image(), f"{path.name}: the submitter runs another image"
            _ray_token_wired(f"{path.name} submitter", template, operator_auth)


def test_volumes_claims_and_secret_references_resolve():
    claims = {d["metadata"]["name"] for _, d in _of_kind("PersistentVolumeClaim")}
    secrets = _secrets()
    claim_templates = {}
    for path, doc in _of_kind("StatefulSet"):
        claim_templates[f"{path.name}:{doc['metadata']['name']}"] = \
            {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates") or []}
    for where, template in _pod_templates():
        volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
        available = set(volumes) | claim_templates.get(where, set())
        for c in _containers(template):
            for m in c.get("volumeMounts") or []:
                assert m["name"] in available, f"{where}/{c['name']}: mounts undefined volume {m['name']!r}"
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"{where}: Secret {ref['name']!r} is not defined in k8s/"
                    assert ref["key"] in secrets[ref["name"]], \
                        f"{where}: Secret {ref['name']} has no key {ref['key']!r}"
        for v in volumes.values():
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                assert claim in claims, f"{where}: PersistentVolumeClaim {claim!r} is not defined in k8s/"


def test_services_select_pods_and_name_their_ports():
    workloads = [(p, d) for p, d in _objects() if d["kind"] in ("Deployment", "StatefulSet")]
    for path, doc in workloads:
        selector = doc["spec"]["selector"]["matchLabels"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{path.name}: selector {selector} does not match its pods {labels}"
    services = {d["metadata"]["name"]: d for _, d in _of_kind("Service")}
    for _, doc in _of_kind("StatefulSet"):
        assert doc["spec"]["serviceName"] in services, \
            f"StatefulSet {doc['metadata']['name']}: no Service {doc['spec']['serviceName']}"
    assert {"redis", "qdrant"} <= set(services)
    for name, svc in services.items():
        selector = svc["spec"].get("selector") or {}
        matched = [d for _, d in workloads
                   if selector and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert matched, f"Service {name}: selector {selector} matches no pod template"
        ports = {p["name"]: p["containerPort"] for d in matched for c in _containers(d["spec"]["template"])
                 for p in c.get("ports") or [] if p.get("name")}
        numbers = set(ports.values())
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            found = target in ports if isinstance(target, str) else target in numbers
            assert found, f"Service {name}: targetPort {target!r} is not a port of its pods ({ports})"


def test_redis_keeps_an_append_only_file_and_recreates_on_update():
    redis = next(d for _, d in _of_kind("Deployment") if d["metadata"]["name"] == "redis")
    container = _containers(redis["spec"]["template"])[0]
    argv = " ".join(container.get("command", []) + container.get("args", []))
    assert "--appendonly yes" in argv
    assert redis["spec"].get("strategy", {}).get("type") == "Recreate", "a ReadWriteOnce volume cannot roll"


def test_core_objects_and_pod_templates_pass_the_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate for schema checks")
    version = "1.30.0"
    for path, doc in _objects():
        if doc["apiVersion"].startswith("ray.io/"):
            continue                                 # CRDs: checked field by field above
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    for where, template in _pod_templates():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
        try:
            kv.validate(wrapped, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
