"""The Kubernetes manifests (k8s/) are valid, agree with each other, with the image and with the code.

Checks, without a cluster:
- every object has apiVersion, kind, a valid name in the namespace; base/kustomization.yaml lists
  exactly the platform files (not runs, not examples); `kubectl kustomize` renders k8s/, the GPU
  overlay and every stage's RayJob, and the stage RayJobs read from the patches are what it renders;
- RayCluster/RayJob/RayService pass the vendored KubeRay CRD schema (tests/schemas/kuberay-v1.json,
  unknown fields rejected where KubeRay prunes), the rules its webhook enforces, and `rayVersion`
  is the installed Ray and the Dockerfile's; the core objects and every pod template pass the
  Kubernetes schema (kubernetes-validate, strict);
- every RayJob entrypoint names a real `ray_jobs/<module>.py` with presets that exist and parse;
- Ray pods use our image, the token and the runs volume; volumes, claims, Secret keys, ConfigMaps,
  Service selectors, named ports and Ingress backends resolve; the NetworkPolicy covers every pod
  that can run the tool executor and opens no egress beyond the stack;
- the RayService's serveConfigV2 is services/serve_config.yaml and passes services.serve_config;
  the GPU overlay changes nothing in it but the generator's GPU.

Not checked here: that pods start; that needs a cluster.
"""
from __future__ import annotations

import copy
import re
import shlex

import pytest

from tests.deploy_files import (K8S, NAMESPACE, RAY_KINDS, ROOT, SECRET, SERVE_CONFIG, cluster_spec, containers,
                                dockerfile, env_of, image, k8s_files, kuberay_errors, kubectl, kustomizations,
                                kustomize, load_all, objects, of_kind, pod_templates, ray_cluster_specs, ray_groups,
                                serve_config_of, stage_jobs)

CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayService": 47}   # KubeRay's limits (it appends suffixes)
needs_kubectl = pytest.mark.skipif(kubectl() is None, reason="kubectl (for `kubectl kustomize`) is not installed")


def _rayservice() -> dict:
    services = of_kind("RayService")
    assert len(services) == 1, "one RayService (k8s/base/rayservice.yaml) serves the graph"
    return services[0][1]


# --------------------------------------------------------------------------------------------
# identity, kustomize


def test_k8s_documents_have_kind_name_and_namespace():
    objs = objects()
    assert objs, "no Kubernetes objects under k8s/"
    for path, doc in objs:
        for key in ("apiVersion", "kind", "metadata"):
            assert doc.get(key), f"{path}: a document without {key}"
        name = doc["metadata"].get("name")
        assert name and DNS1123.match(name) and len(name) <= 63, f"{path.name}: bad metadata.name {name!r}"
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], f"{path.name}: {doc['kind']} is cluster-scoped"
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{path.name}: {doc['kind']}/{name} needs namespace"
        if doc["kind"] in NAME_LIMITS:
            assert len(name) <= NAME_LIMITS[doc["kind"]], f"{path.name}: KubeRay rejects name {name!r} (too long)"
    names = [(d["kind"], d["metadata"]["name"]) for _, d in objs]
    assert len(names) == len(set(names)), f"duplicate objects: {sorted(n for n in names if names.count(n) > 1)}"
    assert [d["metadata"]["name"] for _, d in of_kind("Namespace")] == [NAMESPACE]


def test_kustomizations_list_exactly_the_platform_and_one_job_per_stage():
    base = K8S / "base"
    kust = load_all(base / "kustomization.yaml")[0]
    assert kust.get("namespace") == NAMESPACE
    listed = kust.get("resources") or []
    platform = {p.name for p in base.glob("*.yaml")} - {"kustomization.yaml"}
    examples = {n for n in platform if n.endswith(".example.yaml")}
    assert sorted(listed) == sorted(platform - examples), "base/kustomization.yaml must list every platform file once"
    assert load_all(K8S / "kustomization.yaml")[0]["resources"] == ["base"]
    assert not any(d["kind"] == "RayJob" for p in platform for d in load_all(base / p)), "RayJobs are runs: jobs/"
    jobs = stage_jobs()
    names = [name for _, name, _ in jobs]
    assert None not in names and len(set(names)) == len(names), f"every stage patches its own name: {names}"
    modules = {shlex.split(entry)[2].split(".", 1)[1] for _, _, entry in jobs}
    from ray_jobs.journey import STAGES
    wanted = {"evaluate" if s == "eval" else s for s in STAGES} | {"journey", "finetune"}
    assert wanted <= modules, f"k8s/jobs/ has no RayJob for {sorted(wanted - modules)}"


@needs_kubectl
def test_kustomize_renders_the_platform_the_gpu_overlay_and_every_job():
    platform = kustomize(K8S)
    kinds = {d["kind"] for d in platform}
    assert {"RayCluster", "RayService", "StatefulSet", "Deployment", "Ingress", "NetworkPolicy"} <= kinds, kinds
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in platform if d["kind"] != "Namespace")
    gpu = kustomize(K8S / "overlays" / "gpu")
    assert len(gpu) == len(platform)
    for kdir, name, entrypoint in stage_jobs():
        rendered = kustomize(kdir)
        assert [(d["kind"], d["metadata"]["name"], d["spec"]["entrypoint"]) for d in rendered] == \
            [("RayJob", name, entrypoint)], f"{kdir.relative_to(ROOT)} renders something else than its patches say"
        assert not kuberay_errors(rendered[0]), kuberay_errors(rendered[0])
    assert {p for p in kustomizations()} >= {K8S, K8S / "base", K8S / "overlays" / "gpu"}


# --------------------------------------------------------------------------------------------
# KubeRay


def test_kuberay_objects_pass_the_crd_schema():
    ray_objects = [(p, d) for p, d in objects() if d["kind"] in RAY_KINDS]
    assert {d["kind"] for _, d in ray_objects} == set(RAY_KINDS)
    for path, doc in ray_objects:
        errors = kuberay_errors(doc)
        assert not errors, f"{path.name}: {doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors)


def test_the_kuberay_schema_rejects_a_misspelt_field():
    """The schema is strict where KubeRay prunes: a typo would otherwise vanish on `kubectl apply`."""
    doc = copy.deepcopy(_rayservice())
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4
    doc["spec"]["serveConfig"] = "v1 name"
    errors = kuberay_errors(doc)
    assert any("maxReplica" in e for e in errors) and any("serveConfig" in e for e in errors), errors


def test_ray_versions_match_the_installed_ray_and_the_image():
    ray = pytest.importorskip("ray")
    specs = list(ray_cluster_specs())
    assert len(specs) == 3, [w for w, _ in specs]
    for where, spec in specs:
        assert str(spec.get("rayVersion")) == ray.__version__ == dockerfile()[0]["RAY_VERSION"], \
            f"{where}: rayVersion {spec.get('rayVersion')!r}, installed ray {ray.__version__}"


def test_kuberay_rules_its_webhook_enforces():
    for where, spec in ray_cluster_specs():
        groups = spec.get("workerGroupSpecs") or []
        assert len({g["groupName"] for g in groups}) == len(groups), f"{where}: duplicate groupName"
        for g in groups:
            assert g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 2**31), \
                f"{where}/{g['groupName']}: need minReplicas <= replicas <= maxReplicas"
        for _, group in ray_groups(spec):
            assert not (set(group.get("rayStartParams") or {}) & {"num-cpus", "num-gpus", "memory"}
                        and group.get("resources")), f"{where}: set Ray resources in rayStartParams or `resources`"
    for _, job in of_kind("RayJob"):
        spec, name = job["spec"], job["metadata"]["name"]
        assert bool(spec.get("rayClusterSpec")) != bool(spec.get("clusterSelector")), name
        if spec.get("ttlSecondsAfterFinished", 0) > 0 or spec.get("suspend"):
            assert spec.get("shutdownAfterJobFinishes") is True, f"{name}: ttl/suspend need shutdownAfterJobFinishes"
        for key in ("shutdownAfterJobFinishes", "backoffLimit", "activeDeadlineSeconds"):
            assert key in spec, f"{name}: set {key} (a run must end, and say how it retries)"


def test_rayjob_entrypoints_name_real_modules_and_presets():
    for kdir, name, entrypoint in stage_jobs():
        argv = shlex.split(entrypoint)
        assert argv[:2] == ["python", "-m"] and argv[2].startswith("ray_jobs."), f"{name}: {argv}"
        module, args = argv[2].split(".", 1)[1], argv[3:]
        assert (ROOT / "ray_jobs" / f"{module}.py").is_file(), f"{name}: ray_jobs/{module}.py does not exist"
        config_dir = {"evaluate": "eval"}.get(module, module)
        if "--config" in args:
            preset = args[args.index("--config") + 1]
            assert (ROOT / "configs" / config_dir / f"{preset}.yaml").is_file(), f"{name}: no preset {preset}"
        assert "--config" in args or any(a.startswith("preset=") for a in args), f"{name}: name the preset"
        assert any(a.startswith("run=") for a in args), f"{name}: name the run, so the stages chain"
        # The header says how to run it by hand; it must be what the RayJob runs.
        header = (kdir / "kustomization.yaml").read_text() + "".join(p.read_text() for p in kdir.glob("rayjob.yaml"))
        assert f"#   {entrypoint}\n" in header, f"{kdir.relative_to(ROOT)}: the header's command differs"
    runs = {a for _, _, e in stage_jobs() if "ray_jobs.journey" not in e for a in shlex.split(e) if a.startswith("run=")}
    assert runs == {"run=k8s"}, f"the single-stage RayJobs must share one run to find each other's artifacts: {runs}"


class _Parsed(Exception):
    """Raised instead of running the job once its config has been parsed."""


def test_rayjob_entrypoints_parse_with_the_jobs_own_parser(monkeypatch):
    """Each entrypoint's arguments load into the job's typed config: presets, overrides, keys."""
    import importlib

    from ray_jobs import _args
    real_parse = _args.parse_job_args

    def parse_then_stop(*args, **kwargs):
        raise _Parsed(real_parse(*args, **kwargs))

    for _, name, entrypoint in stage_jobs():
        argv = shlex.split(entrypoint)
        module_name, args = argv[2].split(".", 1)[1], argv[3:]
        module = importlib.import_module(f"ray_jobs.{module_name}")
        if module_name == "journey":
            def stop(jc, module=module):
                raise _Parsed(list(module.stage_configs(jc, jc.run or "r").values()))
            monkeypatch.setattr(module, "run_journey", stop)
        else:
            monkeypatch.setattr(_args, "parse_job_args", parse_then_stop)
            if hasattr(module, "parse_job_args"):   # imported by name rather than through _args
                monkeypatch.setattr(module, "parse_job_args", parse_then_stop)
        with pytest.raises(_Parsed):
            code = module.main(list(args))
            pytest.fail(f"{name}: python -m ray_jobs.{module_name} exited {code} instead of parsing")


# --------------------------------------------------------------------------------------------
# pods, volumes, secrets, services


def test_ray_pods_share_the_image_the_token_and_the_runs_volume():
    runs_dir = dockerfile()[1]["JOURNEY_RUNS"]
    claims = set()
    for where, spec in ray_cluster_specs():
        operator_auth = (spec.get("authOptions") or {}).get("mode") == "token"
        for group_name, group in ray_groups(spec):
            label, container = f"{where} {group_name}", containers(group["template"])[0]
            assert container["image"] == image(), f"{label}: runs another image"
            env = env_of(container)
            if not operator_auth:
                assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{label}: RAY_AUTH_MODE=token missing"
                assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "RAY_AUTH_TOKEN"}
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
            volumes = {v["name"]: v for v in group["template"]["spec"].get("volumes") or []}
            assert runs_dir in mounts, f"{label}: mount the runs volume at {runs_dir}"
            claims.add(volumes[mounts[runs_dir]]["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, f"every Ray pod must mount the same runs volume: {claims}"
    pvc = next(d for _, d in of_kind("PersistentVolumeClaim") if d["metadata"]["name"] in claims)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "head and workers on different nodes all write runs/"
    # The RayService's dashboard is called by the operator (to deploy the Serve config): it needs authOptions.
    assert cluster_spec(_rayservice()).get("authOptions", {}).get("mode") == "token"
    for _, job in of_kind("RayJob"):   # K8sJobMode's default submitter knows nothing of our token
        submitter = containers(job["spec"]["submitterPodTemplate"])[0]
        assert submitter["image"] == image() and "RAY_AUTH_TOKEN" in env_of(submitter)


def test_volumes_claims_secrets_and_configmaps_resolve():
    claims = {d["metadata"]["name"] for _, d in of_kind("PersistentVolumeClaim")}
    secret_keys = {SECRET: set(load_all(K8S / "base" / "secret.example.yaml")[0]["stringData"])}
    configmaps = {d["metadata"]["name"]: set(d["data"]) for _, d in of_kind("ConfigMap")}
    templates = {f"{p.name}:{d['metadata']['name']}": {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates") or []}
                 for p, d in of_kind("StatefulSet")}
    for where, template in pod_templates():
        volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
        for c in containers(template):
            for m in c.get("volumeMounts") or []:
                assert m["name"] in set(volumes) | templates.get(where, set()), f"{where}: undefined volume {m['name']}"
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret_keys.get(ref["name"], ()), f"{where}: no Secret key {ref}"
            for source in c.get("envFrom") or []:
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, f"{where}: no ConfigMap {source}"
        for v in volumes.values():
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            assert claim is None or claim in claims, f"{where}: PersistentVolumeClaim {claim!r} is not defined"


def test_services_select_pods_and_name_their_ports():
    workloads = [d for _, d in objects() if d["kind"] in ("Deployment", "StatefulSet")]
    for doc in workloads:
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items(), doc["metadata"]["name"]
    services = {d["metadata"]["name"]: d for _, d in of_kind("Service")}
    assert {"redis", "qdrant", "frontend"} <= set(services)
    for _, doc in of_kind("StatefulSet"):
        assert doc["spec"]["serviceName"] in services
    for name, svc in services.items():
        selector = svc["spec"]["selector"]
        matched = [d for d in workloads if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert matched, f"Service {name}: selector {selector} matches no pod template"
        ports = {p["name"]: p["containerPort"] for d in matched for c in containers(d["spec"]["template"])
                 for p in c.get("ports") or [] if p.get("name")}
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert (target in ports) if isinstance(target, str) else (target in ports.values()), \
                f"Service {name}: targetPort {target!r} is not a port of its pods ({ports})"


def test_ingress_routes_to_the_gateway_and_the_frontend():
    """Backends are our Services or the ones KubeRay makes for the RayService (<name>-serve-svc)."""
    rayservice = _rayservice()
    serve_port = serve_config_of(rayservice)["http_options"]["port"]
    head_ports = {p["name"]: p["containerPort"] for p in
                  containers(cluster_spec(rayservice)["headGroupSpec"]["template"])[0]["ports"]}
    assert head_ports.get("serve") == serve_port, "KubeRay's serve Service targets the container port named serve"
    known = {d["metadata"]["name"]: {p.get("name"): p["port"] for p in d["spec"]["ports"]} for _, d in of_kind("Service")}
    known[f"{rayservice['metadata']['name']}-serve-svc"] = {"serve": serve_port}
    routes = {}
    for _, ingress in of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in known, f"Ingress backend {backend['name']} is no Service we or KubeRay make"
                port = backend["port"]
                assert port.get("number") in known[backend["name"]].values() or port.get("name") in known[backend["name"]]
                routes[path["path"]] = backend["name"]
    assert routes == {"/v1": "journey-serve-svc", "/": "frontend"}, routes


def test_network_policy_closes_egress_of_every_pod_that_can_run_the_tool_executor():
    rayservice = _rayservice()
    assert "ToolExecutor" in {d["name"] for a in serve_config_of(rayservice)["applications"] for d in a["deployments"]}
    policies = [d for _, d in of_kind("NetworkPolicy") if "Egress" in d["spec"].get("policyTypes", [])]
    assert policies, "no NetworkPolicy restricts egress"
    for group_name, group in ray_groups(cluster_spec(rayservice)):
        labels = group["template"]["metadata"]["labels"]
        covering = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert covering, f"RayService group {group_name} (may host the ToolExecutor) has no egress policy"
        for policy in covering:
            for rule in policy["spec"].get("egress") or []:
                assert rule.get("to"), f"{policy['metadata']['name']}: an egress rule without `to` opens everything"
                for peer in rule["to"]:
                    assert "ipBlock" not in peer, f"{policy['metadata']['name']}: egress to addresses outside the stack"


def test_redis_is_a_statefulset_with_an_append_only_file():
    redis = next(d for _, d in of_kind("StatefulSet") if d["metadata"]["name"] == "redis")
    container = containers(redis["spec"]["template"])[0]
    assert "--appendonly yes" in " ".join(container.get("command", []) + container.get("args", []))
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts & {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}, "AOF on a claimed volume"


def test_core_objects_and_pod_templates_pass_the_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate for schema checks")
    version = "1.30.0"
    for path, doc in objects():
        if doc["apiVersion"].startswith("ray.io/"):
            continue                                 # CRDs: the KubeRay schema above
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    for where, template in pod_templates():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
        try:
            kv.validate(wrapped, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


# --------------------------------------------------------------------------------------------
# the Serve config


def test_rayservice_serves_the_serve_config_file_and_it_validates():
    import yaml

    from services.serve_config import validate_serve_config
    embedded = serve_config_of(_rayservice())
    assert embedded == yaml.safe_load(SERVE_CONFIG.read_text()), \
        "k8s/base/rayservice.yaml serveConfigV2 differs from services/serve_config.yaml: copy the file's content"
    assert validate_serve_config(embedded) == []


@needs_kubectl
def test_gpu_overlay_changes_only_the_generators_gpu_and_the_image():
    from services.serve_config import validate_serve_config
    gpu = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(K8S / "overlays" / "gpu")}
    config = serve_config_of(gpu[("RayService", "journey")])
    assert validate_serve_config(config) == []
    generator = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Generator")
    assert generator["ray_actor_options"].pop("num_gpus") == 1
    assert config == serve_config_of(_rayservice()), "the GPU overlay's Serve config drifted from the base's"
    workers = cluster_spec(gpu[("RayService", "journey")])["workerGroupSpecs"]
    assert containers(workers[0]["template"])[0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    images = {c["image"] for where, t in pod_templates([(K8S, d) for d in gpu.values()]) for c in containers(t)
              if c["image"].startswith("gpt-journey")}
    assert images == {f"{image()}-cu128"}, images


def test_every_file_under_k8s_is_reachable_from_a_kustomization():
    listed = set()
    for kdir in kustomizations():
        for entry in load_all(kdir / "kustomization.yaml")[0].get("resources") or []:
            listed.add((kdir / entry).resolve())
    for path in k8s_files():
        assert path.resolve() in listed or path.name.endswith(".example.yaml"), f"{path} is in no kustomization"
