# syntax=docker/dockerfile:1
# GPT Journey: one image for everything in compose.yaml and k8s/: the Ray head and workers (training
# jobs, the Serve app), the tool-executor worker, the job submitters and the Gradio frontend.
#
#   docker build -t gpt-journey:0.1.0 .
#   docker build --build-arg TORCH_INDEX=cu128 -t gpt-journey:0.1.0-cu128 .    # the GPU variant
#
# JOURNEY_VERSION is the image tag everywhere (compose.yaml and k8s/ say gpt-journey:<it>) and
# RAY_VERSION is the `rayVersion` of every KubeRay resource; tests/test_deploy_manifests.py checks
# that they agree with these ARGs, with pyproject.toml and with the Ray installed for the tests.
#
# Why python:slim and not rayproject/ray: the Ray image brings its own conda Python and packages we
# do not use, and we would still add torch; here we pin exactly the three things that must match
# across head, workers and submitters (Python, Ray, torch) and nothing else. The base is pinned to a
# patch release; for byte-for-byte rebuilds pin its digest too (--build-arg BASE_IMAGE=...@sha256:...).
#
# The GPU variant: the PyTorch CUDA wheels bundle the CUDA runtime (as pip packages), so the base
# stays python:slim; the host needs only the NVIDIA driver plus the NVIDIA container toolkit
# (docker, compose.gpu.yaml) or the NVIDIA device plugin (Kubernetes, k8s/overlays/gpu). Pick the
# index matching your driver from the variants PyTorch publishes for TORCH_VERSION (cu126, cu128...).
#
# Two stages: `build` installs the dependencies into a venv (pip caches, build tools), `runtime`
# copies that venv and the code; a code edit rebuilds only the last layers.

ARG BASE_IMAGE=python:3.11.13-slim-bookworm

# ------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build

ARG RAY_VERSION=2.60.0
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=cpu

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the PyTorch index, so pyproject's `torch` requirement is already met by the
# CPU (or CUDA) build and pip does not pull the default CUDA wheel from PyPI.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --upgrade pip "setuptools>=68" \
 && pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}"

# Dependencies only (not the code): this layer is rebuilt when pyproject.toml changes.
# Ray is pinned here because pyproject only says ray>=2.50 and KubeRay's rayVersion must match.
COPY pyproject.toml /tmp/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt "ray[train,data,serve]==${RAY_VERSION}" \
 && python -c "import ray, torch; assert ray.__version__ == '${RAY_VERSION}', ray.__version__; print('ray', ray.__version__, 'torch', torch.__version__)"

# ------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG JOURNEY_VERSION=0.1.0
ARG RAY_VERSION=2.60.0

LABEL org.opencontainers.image.title="gpt-journey" \
      org.opencontainers.image.version="${JOURNEY_VERSION}" \
      org.opencontainers.image.description="GPT Journey: Ray jobs and services for a GPT-2-class model" \
      io.ray.version="${RAY_VERSION}"

# wget: KubeRay's default readiness/liveness probes run `wget ... /api/local_raylet_healthz` in
# the Ray container, and compose's healthchecks do the same. Without it the pods never get Ready.
# g++: DeepSpeed compiles its CPU communication op (with ninja) the first time ZeRO runs on CPU.
# util-linux (unshare, setpriv) is part of the base: the python tool's sandbox needs it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget g++ \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY ray_jobs ./ray_jobs
COPY services ./services
COPY configs ./configs

# Editable on purpose: shared/config finds presets at <repo root>/configs relative to its own file,
# so the package must stay in /app beside configs/ (a regular install would move it to
# site-packages, where `--config tiny` no longer resolves). Also installs the `journey` command.
# --no-build-isolation: setuptools is in the venv already, so this step needs no network.
# compileall: the code stays root-owned, so the ray user could not write __pycache__ at run time.
RUN pip install --no-deps --no-build-isolation -e . \
 && python -m compileall -q shared ray_jobs services \
 && journey --help > /dev/null \
 && python -m services.serve_config services/serve_config.yaml

# uid 1000 like the rayproject images; k8s pods set fsGroup 1000 so the runs volume is writable.
# /app/runs exists in the image so a fresh docker volume mounted there inherits the ownership.
RUN useradd --create-home --uid 1000 ray \
 && mkdir -p /app/runs \
 && chown ray:ray /app/runs
USER 1000:1000

# RAY_USAGE_STATS_ENABLED=0: no usage telemetry from the cluster (it cannot reach out anyway in
# most private clusters, and would log a warning on every start).
ENV PYTHONUNBUFFERED=1 \
    HOME=/home/ray \
    JOURNEY_RUNS=/app/runs \
    RAY_USAGE_STATS_ENABLED=0

# KubeRay replaces the command with its own `ray start ...`; compose sets one per service.
CMD ["journey", "--help"]
