# metaland — CUDA image for GPU machines (README.md, "Container"). Needs BuildKit (Docker >= 23,
# or DOCKER_BUILDKIT=1 with Docker 20.10); `metaland container build` runs the build for you.
#
#   docker build -t metaland .
#   docker build --secret id=pipcert,src=/etc/ssl/certs/ca-certificates.crt -t metaland .  # TLS-inspecting proxy
#   docker run --rm --gpus all --ipc=host -v "$PWD":/workspace metaland                  # dvc repro
#   docker run --rm --gpus all --ipc=host -v "$PWD":/workspace metaland metaland doctor  # any command
#   docker compose up -d mlflow && docker compose run --rm pipeline                      # with a tracking server
#
# Base: slim Python pinned by version (the interpreter requirements.txt was locked with), not a
# CUDA or PyTorch base image. torch==2.14.1 from PyPI is a CUDA 13.0 build whose nvidia-* wheels,
# pinned in requirements.txt, carry the CUDA runtime, cuDNN and NCCL: an nvidia/cuda base would
# ship a second copy of that stack, and pytorch/pytorch ships its own torch, so the image would no
# longer install the exact pins the tests run with. The host needs only an NVIDIA driver for CUDA
# 13 (>= 580) and the NVIDIA container toolkit; without a GPU the same image runs on the CPU.
# BASE_IMAGE: another image of the same Python on Debian bookworm, for a site that reaches no image
# registry (docker/local-base.sh builds one from Debian's packages). No `# syntax=` line: BuildKit
# would pull a frontend image from a registry; the built-in frontend has all this file uses.
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}

# Determinism (DESIGN.md): cuBLAS workspace for deterministic GEMMs, a fixed hash seed. No usage
# reports from DVC or MLflow (GPU machines often have no way out, and runs need none).
# MLFLOW_TRACKING_URI: absolute, so every stage, `metaland ui` and a healthcheck share one store in
# the mounted checkout whatever their working folder (compose's pipeline service points it at the
# tracking server instead). METALAND_CACHE: downloaded archives stay in the checkout (.metaland/,
# git-ignored) across containers. The NVIDIA_* variables ask the container toolkit for the compute
# libraries and refuse a host driver too old for CUDA 13 at start, with the toolkit's own message.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONHASHSEED=0 \
    CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    DVC_NO_ANALYTICS=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_TRACKING_URI=sqlite:////workspace/mlflow.db \
    METALAND_CACHE=/workspace/.metaland/archives \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA=cuda>=13.0 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# git: DVC works inside a git checkout and every run records its commit; make: the README's commands.
# DL3008 (pin apt versions) is waived: bookworm's point releases replace old package versions, so
# pins would break rebuilds; the Python environment, which carries the results, is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git make \
    && rm -rf /var/lib/apt/lists/*

# safe.directory: the mounted checkout belongs to the host user, not to the container's, and git
# (hence DVC) refuses such a repository without it.
RUN python -m venv /opt/venv \
    && useradd --create-home --uid 1000 --user-group --shell /bin/bash metaland \
    && git config --system --add safe.directory /workspace

# Every Python dependency comes from requirements.txt, the pins the test suite installs (`make
# install`): one layer that survives code changes. Behind a TLS-inspecting proxy, pip trusts the
# CA bundle given as the BuildKit secret `pipcert` (see the top of this file): it is mounted for
# the pip steps only and stored in no layer; without it pip uses its own CA certificates.
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pipcert,required=false \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && pip install --no-cache-dir -r /tmp/requirements.txt

COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/metaland-entrypoint

# A copy of the code, so `metaland doctor` works without a mount; the editable install makes a
# checkout mounted over /workspace the code that runs (--no-deps: nothing beyond the pins; pip
# still fetches the build backend, setuptools, hence the secret again).
WORKDIR /workspace
COPY --chown=metaland:metaland . /workspace
RUN --mount=type=secret,id=pipcert,required=false \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && pip install --no-cache-dir --no-deps -e /workspace \
    && chown -R metaland:metaland /workspace

USER 1000:1000

# Healthy = the checks of `metaland doctor` pass: packages, device, params, DVC, tracking store.
HEALTHCHECK --interval=5m --timeout=2m --start-period=1m --retries=2 CMD ["metaland", "doctor"]

ENTRYPOINT ["metaland-entrypoint"]
CMD ["dvc", "repro"]
