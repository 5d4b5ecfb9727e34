# wheelfarm proxy and builder image: runs as an unprivileged user, keeps its cache on a volume, builds
# wheels for CPython 3.9 to 3.13 in bubblewrap sandboxes (user namespaces of uid 10001).
#   docker build -t wheelfarm .
#   docker run -p 8080:8080 -v wheelfarm-cache:/var/cache/wheelfarm \
#     --security-opt seccomp=unconfined --security-opt systempaths=unconfined wheelfarm
# (README.md, "Docker": why bubblewrap needs those two options, and what to do without them.)
# Build arguments, for machines that cannot pull the default base or download interpreters (the test of the
# image, tests/test_docker_image.py, uses both): BASE_IMAGE, any Debian-based image whose `python` and `pip`
# are a CPython 3.11+ that pip may install into; EXTRA_PYTHONS, the CPython versions uv installs beside the
# base's own (empty: none, builds for the base's version only).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The sandbox (bubblewrap, libseccomp for its filter) and what native builds need (a C toolchain).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap libseccomp2 build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --home-dir /var/lib/wheelfarm --create-home wheelfarm \
    && mkdir -p /var/cache/wheelfarm \
    && chown wheelfarm:wheelfarm /var/cache/wheelfarm

WORKDIR /opt/wheelfarm
COPY pyproject.toml constraints.txt README.md ./
COPY proxy ./proxy
COPY builder ./builder
RUN pip install -c constraints.txt . && rm -rf /root/.cache

# More interpreters, more targets: CPython 3.11 is the image's own; 3.9, 3.10, 3.12 and 3.13 come from
# python-build-standalone through uv, linked as python3.X on PATH, where the builder finds them.
ARG EXTRA_PYTHONS="3.9 3.10 3.12 3.13"
ENV UV_PYTHON_INSTALL_DIR=/opt/python
RUN if [ -n "$EXTRA_PYTHONS" ]; then \
      uv python install $EXTRA_PYTHONS \
      && for version in $EXTRA_PYTHONS; do \
           ln -s "$(uv python find --no-project --managed-python "$version")" "/usr/local/bin/python$version"; \
         done \
      && rm -rf /root/.cache; \
    fi

USER wheelfarm
VOLUME ["/var/cache/wheelfarm"]
EXPOSE 8080
ENV WHEELFARM_SERVER_HOST=0.0.0.0 \
    WHEELFARM_SERVER_PORT=8080 \
    WHEELFARM_CACHE_DIR=/var/cache/wheelfarm \
    WHEELFARM_LOGGING_FORMAT=json
# On the port the server listens on (WHEELFARM_SERVER_PORT may move it, with --network host say).
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WHEELFARM_SERVER_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["wheelfarm"]
CMD ["serve"]
