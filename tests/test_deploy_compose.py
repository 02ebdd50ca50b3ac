"""The Dockerfile and compose.yaml are valid and agree with k8s/ and the code, without Docker.

- Dockerfile: JOURNEY_VERSION is pyproject's version and the one image tag everywhere; RAY_VERSION
  is the installed Ray; what it COPYs from the build context exists; it runs as a non-root user.
- compose.yaml and compose.gpu.yaml pass the Compose Specification JSON schema (the copy
  check-jsonschema ships); volumes, depends_on and healthchecks resolve; everything that talks to
  Ray carries the token; the jobs profile submits with `journey submit` to the head's dashboard.
- Agreement: every `${VAR}` compose needs and every Secret key k8s reads is in .env.example (the
  one place a user sets values), and the code reads those names; the Serve config's redis/qdrant
  URLs and port name services that compose and k8s both define, on the ports they expose.
"""
from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator

import pytest

from tests.deploy_files import (COMPOSE, ENV_EXAMPLE, ROOT, SECRET, SERVE_CONFIG, containers, dockerfile, env_example,
                                image, load_all, objects, of_kind, pod_templates)


@pytest.fixture(scope="module")
def compose() -> dict:
    docs = load_all(COMPOSE)
    assert len(docs) == 1, "compose.yaml holds one document"
    return docs[0]


def _compose_schema_validator():
    from importlib import resources
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (it ships the compose-spec schema)")
    import jsonschema
    text = (resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


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


def _command(svc: dict) -> str:
    parts = list(svc.get("entrypoint") or []) + ([svc["command"]] if isinstance(svc.get("command"), str)
                                                  else list(svc.get("command") or []))
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_versions_are_pyprojects_and_the_installed_rays():
    ray = pytest.importorskip("ray")
    args, _, text = dockerfile()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert args["JOURNEY_VERSION"] == pyproject["project"]["version"], "JOURNEY_VERSION is the image tag: = pyproject's"
    assert args["RAY_VERSION"] == ray.__version__, f"Dockerfile RAY_VERSION != installed ray {ray.__version__}"
    assert re.search(r"ray\[[\w,]+\]==\$\{RAY_VERSION\}", text), "the image must pin Ray to RAY_VERSION"
    assert re.search(r"^ARG BASE_IMAGE=python:\d+\.\d+\.\d+-slim", text, re.M), "pin the base to a patch release"
    assert re.search(r"--index-url \"https://download.pytorch.org/whl/\$\{TORCH_INDEX\}\"", text), "CPU/CUDA by TORCH_INDEX"


def test_dockerfile_is_multi_stage_non_root_and_copies_what_exists():
    _, env, text = dockerfile()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.M)
    assert len(stages) >= 2, "build and runtime stages"
    copies = re.findall(r"^COPY\s+(.+)$", text, re.M)
    sources = [src for line in copies if "--from=" not in line for src in line.split()[:-1]]
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    for needed in ("pyproject.toml", "shared", "ray_jobs", "services", "configs"):
        assert needed in sources, f"the image needs {needed}"
    assert any(f"--from={stages[0]}" in line for line in copies), "the runtime stage copies the build stage's venv"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0")), "the image must end as a non-root user"
    assert re.search(r"pip install[^\n]*\s-e\s+\.", text), "install the project editable in /app (configs/ beside it)"
    assert env.get("JOURNEY_RUNS", "").startswith("/")
    assert re.search(r"apt-get install[^\n]*\bwget\b", text), "KubeRay's health probes need wget in the image"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".git", ".venv", "runs"} <= set(ignored), ".dockerignore must keep secrets and artifacts out"


def test_every_reference_to_our_image_uses_the_dockerfile_tag():
    version = dockerfile()[0]["JOURNEY_VERSION"]
    files = [COMPOSE, ROOT / "compose.gpu.yaml", *sorted((ROOT / "k8s").rglob("*.yaml"))]
    for path in files:
        for tag in re.findall(r"(?<![\w/.-])gpt-journey:([\w.-]+)", path.read_text(encoding="utf-8")):
            assert tag == version or tag.startswith(f"{version}-"), f"{path.name}: gpt-journey:{tag}, expected {version}"
    images = {c["image"] for _, t in pod_templates() for c in containers(t) if c["image"].startswith("gpt-journey")}
    assert images == {image()}, images


# --------------------------------------------------------------------------------------------
# compose


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_files_pass_the_compose_spec_schema(name):
    validator = _compose_schema_validator()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
              for e in validator.iter_errors(load_all(ROOT / name)[0])]
    assert not errors, f"{name}:\n" + "\n".join(errors)


def test_the_compose_schema_rejects_a_misspelt_key(compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["healthchek"] = broken["services"]["redis"].pop("healthcheck")
    assert any("healthchek" in e.message for e in _compose_schema_validator().iter_errors(broken))


def test_compose_services_volumes_and_dependencies_resolve(compose):
    services = compose["services"]
    assert {"ray-head", "redis", "qdrant", "frontend", "journey"} <= set(services), sorted(services)
    declared, used = set(compose["volumes"]), set()
    for name, svc in services.items():
        if svc.get("build"):
            assert svc["image"] == image(), f"{name} builds our image: tag it {image()}"
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0]
            if not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source!r}"
                used.add(source)
        for target, how in (svc.get("depends_on") or {}).items():
            assert target in services and target != name, f"{name} depends on {target!r}"
            if how.get("condition") == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}'s healthcheck"
        for p in svc.get("ports") or []:
            assert isinstance(p, str) and p.startswith("127.0.0.1:"), f"{name}: publish {p!r} on loopback, quoted"
    assert declared == used and {"runs", "redis-data", "qdrant-storage"} <= declared
    assert "--appendonly yes" in " ".join(services["redis"]["command"]), "the bus relies on AOF across restarts"


def test_compose_ray_head_validates_then_deploys_the_serve_config(compose):
    head = compose["services"]["ray-head"]
    script = _command(head)
    assert "ray start --head --block" in script and "--dashboard-host=0.0.0.0" in script
    assert script.index("python -m services.serve_config") < script.index("serve deploy"), "validate before deploy"
    default = re.match(r"\$\{SERVE_CONFIG:-(.+)\}", head["environment"]["SERVE_CONFIG"]).group(1)
    assert (ROOT / default).resolve() == SERVE_CONFIG.resolve()
    port = json.loads(json.dumps(load_all(SERVE_CONFIG)[0]))["http_options"]["port"]
    assert f"127.0.0.1:{port}:{port}" in head["ports"], "publish the Serve HTTP port of the Serve config"
    assert head["read_only"] is True and head["cap_drop"] == ["ALL"] and head.get("pids_limit") and head.get("mem_limit")
    assert {t.split(":")[0] for t in head["tmpfs"]} >= {"/tmp", "/home/ray"}, "a read-only root needs writable tmpfs"


def test_compose_jobs_profile_submits_with_the_token(compose):
    services = compose["services"]
    job = services["journey"]
    assert job["profiles"] == ["jobs"], "the job submitter must not start with `compose up`"
    argv = job["entrypoint"]
    assert argv[:2] == ["journey", "submit"], argv
    m = re.match(r"^http://([\w.-]+):(\d+)$", argv[argv.index("--address") + 1])
    assert m and m.group(1) in job["depends_on"], "submit to a service it waits for"
    assert f"--dashboard-port={m.group(2)}" in _command(services[m.group(1)])
    from ray_jobs.submit import resolve_stage
    assert resolve_stage(job["command"][0]) == "journey"
    for name, svc in services.items():
        talks_to_ray = "ray " in _command(svc) or "journey submit" in _command(svc)
        env = svc.get("environment") or {}
        if talks_to_ray:
            assert env.get("RAY_AUTH_MODE") == "token" and "RAY_AUTH_TOKEN" in str(env.get("RAY_AUTH_TOKEN")), name
        else:
            assert "RAY_AUTH_TOKEN" not in env, f"{name} does not talk to Ray: keep the token out of it"


def test_compose_interpolations_are_closed(compose):
    for s in _strings(compose):
        rest = s.replace("$$", "")
        for m in re.finditer(r"\$", rest):
            assert re.match(r"[A-Za-z_]\w*|\{[A-Za-z_]\w*([:?\-+][^}]*)?\}", rest[m.end():]), f"bad interpolation: {s!r}"


# --------------------------------------------------------------------------------------------
# one place for values, and agreement with the code


def test_every_value_a_user_sets_is_in_env_example_and_read_by_the_code(compose):
    documented = env_example()
    required = {m for s in _strings(compose) for m in re.findall(r"\$\{(\w+):\?", s)}
    optional = {m for s in _strings(compose) for m in re.findall(r"\$\{(\w+):-", s)}
    assert required | optional <= set(documented), f".env.example lacks {sorted(required | optional - set(documented))}"
    secret_keys = {ref["key"] for _, t in pod_templates() for c in containers(t) for e in c.get("env") or []
                   for ref in [(e.get("valueFrom") or {}).get("secretKeyRef")] if ref and ref["name"] == SECRET}
    assert secret_keys <= set(documented), f"k8s reads Secret keys missing from .env.example: {secret_keys - set(documented)}"
    assert all(not documented[k] or k == "JOURNEY_FRONTEND_USER" for k in required), "no secret values in .env.example"
    from services.frontend.frontend_config import PASSWORD_ENV, USER_ENV
    code = (ROOT / "services" / "gateway" / "deployment.py").read_text()
    assert {USER_ENV, PASSWORD_ENV} <= required and '"JOURNEY_API_KEY"' in code and "JOURNEY_API_KEY" in required
    assert ".env" in (ROOT / ".gitignore").read_text().split(), ".env must stay out of git"
    assert ENV_EXAMPLE.name not in (ROOT / ".gitignore").read_text().split()


def test_serve_config_urls_name_services_that_compose_and_k8s_both_define(compose):
    args = load_all(SERVE_CONFIG)[0]["applications"][0]["args"]
    k8s_services = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for _, d in of_kind("Service")}
    configmap = next(d["data"] for _, d in of_kind("ConfigMap") if d["metadata"]["name"] == "journey-config")
    for key, env_name in (("redis_url", "REDIS_URL"), ("qdrant_url", "QDRANT_URL")):
        m = re.match(r"^\w+://([\w-]+):(\d+)", args[key])
        host, port = m.group(1), int(m.group(2))
        assert host in compose["services"], f"serve config {key}: no compose service {host}"
        assert port in k8s_services.get(host, ()), f"serve config {key}: no k8s Service {host} on port {port}"
        assert configmap[env_name] == args[key], f"journey-config {env_name} != the serve config's {key}"
    frontend = " ".join(compose["services"]["frontend"]["command"])
    assert f"redis_url={args['redis_url']}" in frontend
    assert args["runs_dir"] == dockerfile()[1]["JOURNEY_RUNS"] == configmap["JOURNEY_RUNS"]
    assert "qdrant_url=http://qdrant:6333" in (ROOT / "k8s" / "jobs" / "index" / "kustomization.yaml").read_text()
    frontend_port = re.search(r"--port\D+(\d+)", frontend).group(1)
    k8s_frontend = next(d for _, d in objects() if d["kind"] == "Deployment" and d["metadata"]["name"] == "frontend")
    assert frontend_port in containers(k8s_frontend["spec"]["template"])[0]["command"]
