#!/bin/sh
# A local stand-in for the image's base, python:3.11.7-slim-bookworm, for a machine that reaches
# Debian's packages but no image registry (an air-gapped site, or CI here). Built from Debian
# alone: `debootstrap --variant=minbase bookworm`, `docker import`, then Debian's python3.11 and
# python3.11-venv with `python` and `python3` links (the official image's names). Prints its tag:
#
#   docker build --network host --build-arg BASE_IMAGE="$(docker/local-base.sh)" -t metaland .
#
# The tag names this script's content, so an image built from an older recipe is never taken
# for this one, and an existing image of the same recipe is reused without building (minutes).
# Its Python is Debian's 3.11.2, not 3.11.7: the pins install and run the same, but numbers may
# differ in the last bits from those of the official base. Needs root (debootstrap).
#
# Environment: DOCKER (the docker client, default `docker`), DEBIAN_MIRROR (default: debootstrap's).
set -eu

docker="${DOCKER:-docker}"
recipe="$(sha256sum "$0" | cut -c1-12)"
tag="metaland-local-base:bookworm-py3.11-${recipe}"

if "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

say() {
  printf 'local-base: %s\n' "$*" >&2
}
if [ "$(id -u)" != 0 ]; then
  say "error: debootstrap needs root to build $tag; nothing was built. Fix: run this script as root."
  exit 2
fi
if ! command -v debootstrap >/dev/null; then
  say "error: debootstrap is not installed; nothing was built. Fix: apt-get install debootstrap."
  exit 2
fi

root="$(mktemp -d "${TMPDIR:-/tmp}/metaland-local-base.XXXXXX")"
stage="metaland-local-base:stage-${recipe}"
builder="metaland-local-base-${recipe}-$$"
cleanup() {
  rm -rf "$root" "$root.log"
  "$docker" rm -f "$builder" >/dev/null 2>&1 || true
  "$docker" image rm "$stage" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Debian's minimal system (apt, dpkg, coreutils, passwd), imported as an image.
say "debootstrap --variant=minbase bookworm"
# shellcheck disable=SC2086 # DEBIAN_MIRROR is one word or nothing
if ! debootstrap --variant=minbase bookworm "$root" ${DEBIAN_MIRROR:-} >"$root.log" 2>&1; then
  tail -20 "$root.log" >&2
  say "error: debootstrap failed (log above); nothing was built."
  exit 1
fi
tar -C "$root" --numeric-owner -c . | "$docker" import - "$stage" >/dev/null

# 2. Debian's Python inside it (installing it in debootstrap's own pass fails on python3.11-venv),
# named `python` and `python3` as in the official image; no apt lists left behind.
say "python3.11 and python3.11-venv from Debian"
"$docker" run --name "$builder" --network host "$stage" sh -euc '
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv ca-certificates >/dev/null
  ln -sf python3.11 /usr/bin/python3
  ln -sf python3.11 /usr/bin/python
  apt-get clean
  rm -rf /var/lib/apt/lists/*
  python --version
' >&2
"$docker" commit \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python"]' \
  "$builder" "$tag" >/dev/null
say "built $tag"
echo "$tag"
