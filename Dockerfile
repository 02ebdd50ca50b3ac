# syntax=docker/dockerfile:1
# GPT Journey: one image for the Ray head, the Ray workers and the job submitters, in
# compose.yaml and in k8s/ (KubeRay) alike.
#
#   docker build -t gpt-journey:0.1.0 .
#   docker build --build-arg TORCH_INDEX=cu128 -t gpt-journey:0.1.0-cu128 .    # the GPU variant
#
# JOURNEY_VERSION is the image tag everywhere (compose.yaml and k8s/*.yaml say gpt-journey:<it>) and
# RAY_VERSION is the `rayVersion` of every KubeRay resource; tests/test_deploy_manifests.py checks
# that they agree with these ARGs, with pyproject.toml and with the Ray installed for the tests.
#
# Why python:3.11-slim and not rayproject/ray: the Ray image brings its own conda Python and
# packages we do not use, and we would still add torch; here we pin exactly the three things that
# must match across head, workers and submitters (Python, Ray, torch) and nothing else.
#
# The GPU variant: the PyTorch CUDA wheels bundle the CUDA runtime (as pip packages), so the base
# stays python:slim; the host needs only the NVIDIA driver plus the NVIDIA container toolkit
# (docker) or the NVIDIA device plugin (Kubernetes). Pick the index matching your driver from the
# variants PyTorch publishes for TORCH_VERSION (cu126, cu128, ...).

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG JOURNEY_VERSION=0.1.0
ARG RAY_VERSION=2.60.0
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=cpu

LABEL org.opencontainers.image.title="gpt-journey" \
      org.opencontainers.image.version="${JOURNEY_VERSION}" \
      org.opencontainers.image.description="GPT Journey: Ray jobs and services for a GPT-2-class model" \
      io.ray.version="${RAY_VERSION}"

# wget: KubeRay's default readiness/liveness probes run `wget ... /api/local_raylet_healthz` in
# the Ray container, and compose's healthcheck does the same. Without it the pods never get Ready.
# g++: DeepSpeed compiles its CPU communication op (with ninja) the first time ZeRO runs on CPU.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget g++ \
 && rm -rf /var/lib/apt/lists/*

# torch first, from the PyTorch index, so pyproject's `torch` requirement is already met by the
# CPU (or CUDA) build and pip does not pull the default CUDA wheel from PyPI.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}"

WORKDIR /app

# Dependencies in their own layer: it is rebuilt when pyproject.toml changes, not on every code edit.
# Ray is pinned here because pyproject only says ray>=2.50 and KubeRay's rayVersion must match.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt "ray[train,data,serve]==${RAY_VERSION}" \
 && python -c "import ray, torch; assert ray.__version__ == '${RAY_VERSION}', ray.__version__; print('ray', ray.__version__, 'torch', torch.__version__)"

COPY shared ./shared
COPY ray_jobs ./ray_jobs
COPY services ./services
COPY configs ./configs

# Editable on purpose: shared/config finds presets at <repo root>/configs relative to its own file,
# so the package must stay in /app beside configs/ (a regular install would move it to
# site-packages, where `--config tiny` no longer resolves). Also installs the `journey` command.
# compileall: the code stays root-owned, so the ray user could not write __pycache__ at run time.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -e . \
 && python -m compileall -q shared ray_jobs services \
 && journey --help > /dev/null

# uid 1000 like the rayproject images; k8s pods set fsGroup 1000 so the runs volume is writable.
# /app/runs exists in the image so a fresh docker volume mounted there inherits the ownership.
RUN useradd --create-home --uid 1000 ray \
 && mkdir -p /app/runs \
 && chown ray:ray /app/runs
USER ray

# RAY_USAGE_STATS_ENABLED=0: no usage telemetry from the cluster (it cannot reach out anyway in
# most private clusters, and would log a warning on every start).
ENV PYTHONUNBUFFERED=1 \
    JOURNEY_RUNS=/app/runs \
    RAY_USAGE_STATS_ENABLED=0

# KubeRay replaces the command with its own `ray start ...`; compose sets one per service.
CMD ["journey", "--help"]
