#!/bin/sh
# Entrypoint of the metaland image (Dockerfile): check the mounted checkout, then run the command
# given to `docker run` (default `dvc repro`) in place of this shell, so signals reach it.
#
#   docker run --gpus all --ipc=host -v "$PWD":/workspace IMAGE                    -> dvc repro
#   docker run --gpus all --ipc=host -v "$PWD":/workspace IMAGE metaland doctor    -> any command
#
# It refuses, before anything runs, the commands that write pipeline outputs when they would be
# lost or fail late: no checkout mounted on the workspace (outputs would vanish with the
# container), or a checkout this user cannot write (the host's uid differs from the image's 1000).
set -eu

workspace="${METALAND_WORKSPACE:-/workspace}"

say() {
  printf 'metaland-entrypoint: %s\n' "$*" >&2
}

# With `--user UID:GID` of a user the image does not know, HOME is "/" and not writable; DVC,
# MLflow, matplotlib and Triton keep caches under HOME, so they get a private writable one.
if [ ! -w "${HOME:-/}" ]; then
  HOME="${TMPDIR:-/tmp}/metaland-home-$(id -u)"
  export HOME
  mkdir -p "$HOME"
fi

is_mount_point() {
  # Field 5 of /proc/self/mountinfo is the mount point (a bind mount, volume or tmpfs).
  awk -v dir="$1" '$5 == dir { found = 1 } END { exit !found }' /proc/self/mountinfo 2>/dev/null
}

writes_outputs=false
case "${1:-} ${2:-}" in
  "dvc repro" | "dvc exp" | "dvc pull" | "dvc checkout" | \
  "metaland fetch" | "metaland train" | "metaland extract" | "metaland probe" | \
  "metaland aggregate" | "metaland plot")
    writes_outputs=true
    ;;
esac

if ! is_mount_point "$workspace" && [ "${METALAND_ALLOW_UNMOUNTED:-0}" != 1 ]; then
  if [ "$writes_outputs" = true ]; then
    say "error: no checkout is mounted on $workspace, so '$*' would write its outputs into the" \
      "container and lose them when it exits; nothing was run. Fix: run from your checkout with" \
      "\`docker run -v \"\$PWD\":$workspace ...\` (or set METALAND_ALLOW_UNMOUNTED=1 to work on the" \
      "image's own copy of the code on purpose)."
    exit 2
  fi
  say "note: no checkout mounted on $workspace; running on the image's own copy of the code."
fi

if [ "$writes_outputs" = true ] && [ ! -w "$workspace" ]; then
  say "error: $workspace is not writable by uid $(id -u) (the checkout belongs to another user), so" \
    "'$*' could not write its outputs; nothing was run. Fix: add \`--user \"\$(id -u):\$(id -g)\"\` to" \
    "\`docker run\` (compose: set UID and GID), or make the checkout writable by uid $(id -u)."
  exit 2
fi

exec "$@"
