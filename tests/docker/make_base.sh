#!/bin/sh
# A local stand-in for the Dockerfile's default base image (python:3.11-slim-bookworm), for machines that
# reach Debian's archive and the Python package index but no container registry: a minimal Debian bookworm
# (mmdebstrap, as root) with Debian's CPython 3.11, its venv and pip, imported into the Docker engine.
#   tests/docker/make_base.sh [TAG]        (default wheelfarm-test-base:bookworm)
# DEBIAN_MIRROR chooses the archive (default: mmdebstrap's, the host's own apt sources for bookworm).
# Made to look like the official image where the Dockerfile and builds rely on it: `python` and `pip` on
# PATH, the interpreter's C headers (native extensions are built against them), pip allowed to install into
# the system interpreter (Debian marks it externally managed, PEP 668; the official image's own CPython in
# /usr/local is not), PATH and LANG set. The Dockerfile itself is not changed for it. It also trusts the
# host's own local certificate authorities (/usr/local/share/ca-certificates), so the image's `pip install`
# works wherever the host's does, behind a TLS-inspecting proxy too.
set -eu
tag=${1:-wheelfarm-test-base:bookworm}
suite=bookworm
mmdebstrap --variant=minbase --format=tar \
    --include=python3,python3-dev,python3-venv,python3-pip,python-is-python3,ca-certificates \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='for crt in /usr/local/share/ca-certificates/*.crt; do
        if [ -f "$crt" ]; then cp "$crt" "$1"/usr/local/share/ca-certificates/; fi; done' \
    --customize-hook='chroot "$1" update-ca-certificates' \
    --customize-hook='ln -sf pip3 "$1"/usr/bin/pip' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$suite" - ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} \
  | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["python3"]' \
      - "$tag"
