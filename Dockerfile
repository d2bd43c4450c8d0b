# metaland — CUDA image for GPU machines.
#
#   docker build -t metaland .
#   docker run --gpus all -v "$PWD":/workspace metaland                # dvc repro on your checkout
#   docker run --gpus all -v "$PWD":/workspace metaland python -m metaland doctor
#
# The image runs as the unprivileged user `metaland` (uid 1000). If your checkout belongs to
# another uid, add `--user "$(id -u):$(id -g)"` so the pipeline can write its outputs there.
#
# Base: slim Python, not a CUDA base image. torch==2.14.1 from PyPI is a CUDA build whose
# nvidia-* wheels (pinned in requirements.txt) carry the CUDA runtime, so a CUDA base image would
# only duplicate it. The host needs an NVIDIA driver recent enough for CUDA 13 and the NVIDIA
# container toolkit; without a GPU the same image runs on the CPU (device: auto).
FROM python:3.11.7-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    DVC_NO_ANALYTICS=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# git: DVC works inside a git checkout and runs record its commit; make: the README's commands.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git make \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv \
    && useradd --create-home --uid 1000 --user-group --shell /bin/bash metaland

# Dependencies first (a layer that survives code changes), exactly as pinned.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

WORKDIR /workspace
COPY --chown=metaland:metaland . /workspace
# Editable install: a checkout mounted over /workspace is the code that runs.
RUN pip install --no-cache-dir --no-deps -e /workspace \
    && chown -R metaland:metaland /workspace \
    && git config --system --add safe.directory /workspace

USER 1000:1000

CMD ["dvc", "repro"]
