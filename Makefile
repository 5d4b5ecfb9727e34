# Two entry points for a fresh machine: `make serve` and `make test`. Everything else is set-up they share.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The machine-wide pip config may add extra indexes and constraints: never let it decide what we install.
export PIP_CONFIG_FILE := /dev/null
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: serve test lint typecheck unit venv clean test-unprivileged

$(BIN)/wheelfarm: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

# Build backends the fake upstream serves to the builder in tests (the same pinned versions as the venv).
WHEELHOUSE := tests/.wheelhouse
$(WHEELHOUSE)/.done: constraints.txt
	$(BIN)/pip download -q --no-deps --only-binary :all: -c constraints.txt -d $(WHEELHOUSE) flit_core setuptools
	touch $@

# The clients of tests/test_compat_matrix.py, downloaded once (a new version here needs `rm -rf tests/.clients`
# first): wheels of the pip releases of the matrix, which the tests install offline into venvs of each
# interpreter; flit_core 3.9.0, a build backend Pythons 3.6 and 3.7 can run (their clients build tinypure
# themselves, as they would with PyPI's older flit_core); poetry and pdm in venvs of their own, with their
# dependencies as they were on CLIENTS_DATE (pdm's hishel as its own lock pins it: hishel 2 broke pdm); and
# dep-logic<0.7, which pdm fetches from the index on first use with a Python older than 3.10.
CLIENTS := tests/.clients
COMPAT_PIPS := 20.3.4 21.3.1 22.3.1 23.0.1 23.2.1 24.3.1 26.3
POETRY_VERSION := 2.5.1
PDM_VERSION := 2.29.4
CLIENTS_DATE := 2026-12-01T00:00:00Z
$(CLIENTS)/.done: | venv
	rm -rf $(CLIENTS)
	for version in $(COMPAT_PIPS); do \
		$(BIN)/pip download -q --no-deps --only-binary :all: -d $(CLIENTS)/pip pip==$$version || exit 1; \
	done
	$(BIN)/pip download -q --no-deps --only-binary :all: -d $(CLIENTS)/backends flit_core==3.9.0
	$(BIN)/pip install -q --only-binary :all: --python-version 3.8 --target $(CLIENTS)/pdm-compat 'dep-logic<0.7'
	$(BIN)/uv venv -q --python $(BIN)/python $(CLIENTS)/poetry
	UV_NATIVE_TLS=1 $(BIN)/uv pip install -q --python $(CLIENTS)/poetry/bin/python --exclude-newer $(CLIENTS_DATE) \
		poetry==$(POETRY_VERSION)
	$(BIN)/uv venv -q --python $(BIN)/python $(CLIENTS)/pdm
	UV_NATIVE_TLS=1 $(BIN)/uv pip install -q --python $(CLIENTS)/pdm/bin/python --exclude-newer $(CLIENTS_DATE) \
		pdm==$(PDM_VERSION) 'hishel[httpx2]==1.4.0'
	touch $@

venv: $(BIN)/wheelfarm

# The builder's sandbox (a Debian package); the test suite runs real sandboxed builds.
BWRAP := /usr/bin/bwrap
CHROMIUM := /usr/bin/chromium
$(BWRAP):
	-apt-get update -qq && apt-get install -y -qq bubblewrap || echo "could not install bubblewrap: wheel builds stay off"

# PostgreSQL (Debian's package) for the cluster tests: they run their own server in a temporary folder.
.PHONY: postgresql
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq postgresql) || \
		echo "could not install postgresql: tests/test_cluster.py fails"

# Headless Chromium for the admin page's browser test.
$(CHROMIUM):
	-apt-get update -qq && apt-get install -y -qq chromium || echo "could not install chromium: tests/test_admin_page.py fails"

serve: venv $(BWRAP)
	$(BIN)/wheelfarm serve $(ARGS)

lint: venv
	$(BIN)/ruff check proxy builder tests bench
	$(BIN)/ruff format --check proxy builder tests bench

typecheck: venv
	$(BIN)/mypy

# Two test processes (pytest-xdist), each test module in one of them: many tests wait on real builds and
# clients, so the suite takes about half the time on the 2 cores CI has.
# The Docker image's test is not among them (`make test-docker`, below).
PYTEST_PARALLEL ?= -n 2 --dist loadfile
test: lint typecheck $(WHEELHOUSE)/.done $(CLIENTS)/.done $(BWRAP) $(CHROMIUM) postgresql
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not docker" $(PYTEST_ARGS)
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory test-unprivileged; fi

# The builds and the hostile suite once more as an unprivileged user (uid 10001, as in the Docker image),
# with wheelfarm installed from its wheel (not editable) into a venv of Debian's own Python 3.11: builds then
# run in user namespaces of that user, and the packaged files are what runs.
CI_USER := wheelfarm-ci
CI_HOME := /var/tmp/wheelfarm-ci
UNPRIVILEGED_TESTS := tests/test_builds.py tests/test_hostile_archives.py tests/test_hostile_escapes.py \
	tests/test_hostile_limits.py tests/test_hostile_host.py tests/test_hostile_outputs.py \
	tests/test_hostile_lifecycle.py tests/test_packaging.py tests/test_provenance.py tests/test_verify_rebuild.py
test-unprivileged: venv $(WHEELHOUSE)/.done $(BWRAP)
	id -u $(CI_USER) >/dev/null 2>&1 || useradd --system --uid 10001 --user-group --home-dir $(CI_HOME) $(CI_USER)
	rm -rf $(CI_HOME) && mkdir -p $(CI_HOME)/src
	tar --exclude=./.venv --exclude=./.git --exclude=./bench/.venv --exclude=./tests/.clients --exclude='*/__pycache__' -cf - . | tar -xf - -C $(CI_HOME)/src
	chown -R $(CI_USER):$(CI_USER) $(CI_HOME)
	cd $(CI_HOME)/src && runuser -u $(CI_USER) -- env -i PATH=/usr/bin:/bin HOME=$(CI_HOME) \
		UV_CACHE_DIR=$(CI_HOME)/uv-cache $(CURDIR)/$(BIN)/uv venv -q --python /usr/bin/python3.11 $(CI_HOME)/venv
	cd $(CI_HOME)/src && runuser -u $(CI_USER) -- env -i PATH=/usr/bin:/bin HOME=$(CI_HOME) \
		UV_CACHE_DIR=$(CI_HOME)/uv-cache UV_NATIVE_TLS=1 $(CURDIR)/$(BIN)/uv pip install -q --python $(CI_HOME)/venv/bin/python \
		-c constraints.txt '.[test]' pip
	cd $(CI_HOME)/src && runuser -u $(CI_USER) -- env -i PATH=$(CI_HOME)/venv/bin:/usr/bin:/bin HOME=$(CI_HOME) \
		LANG=C.UTF-8 PIP_CONFIG_FILE=/dev/null $(CI_HOME)/venv/bin/pytest -p no:cacheprovider $(PYTEST_PARALLEL) \
		$(UNPRIVILEGED_TESTS)

# The Docker image, built from this checkout and run (tests/test_docker_image.py; README.md, "Docker"):
# minutes of work, so not part of `make test` or CI. Installs Docker and mmdebstrap (Debian) when missing
# and, when no engine answers (no systemd to start one), starts dockerd as a machine without iptables or
# overlayfs allows: no bridge (the test's containers use the host's network), the vfs storage driver.
DOCKERD_LOG ?= /tmp/dockerd.log
.PHONY: test-docker
test-docker: venv $(WHEELHOUSE)/.done
	command -v docker >/dev/null && command -v mmdebstrap >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq docker.io mmdebstrap; }
	docker info >/dev/null 2>&1 || { \
		nohup dockerd --iptables=false --ip-masq=false --bridge=none --storage-driver=vfs \
			>$(DOCKERD_LOG) 2>&1 </dev/null & \
		for second in $$(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done; }
	docker info --format 'Docker engine {{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}}'
	$(BIN)/pytest -m docker -s --durations=5 $(PYTEST_ARGS) tests/test_docker_image.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# Benchmarks (README.md, "Benchmarks"): wheelfarm against proxpi, devpi-server and nginx on
# loopback, in a venv of their own. `make bench ARGS=--quick` is a smoke run; ARGS=--profile adds py-spy.
BENCH_VENV := bench/.venv
$(BENCH_VENV)/.done: bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q -r bench/requirements.txt
	touch $@

BENCH_TOOLS := /usr/sbin/nginx /usr/bin/wrk /usr/bin/curl
$(BENCH_TOOLS):
	apt-get update -qq && apt-get install -y -qq nginx-light wrk curl

.PHONY: bench
bench: venv $(WHEELHOUSE)/.done $(BWRAP) $(BENCH_TOOLS) $(BENCH_VENV)/.done
	$(BENCH_VENV)/bin/python bench/run.py $(ARGS)
