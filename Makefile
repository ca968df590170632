# aitherfwd — the two README commands are `sudo make demo` and `sudo make test`.
# `make setup` is idempotent: Debian packages (only the missing ones), then a .venv with
# the package installed editable. Everything else depends on it.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp

# Debian packages the project needs at run time and in its tests.
DEB_PACKAGES := nftables libnftables1 conntrack iproute2 libsystemd-dev pkg-config gcc \
                python3-dev python3-venv nmap hping3 ncat procps util-linux curl \
                dnsmasq-base tzdata python3-uvloop
# Only the tests need these: promtool and a real Prometheus server (tests/kernel/test_metrics.py),
# iptables-nft for Docker's own rules in the Docker-shaped lab (lab/containers.py), a real NATS
# server with JetStream for the fleet (tests/kernel/test_fleet.py; Debian 12 ships 2.9,
# JetStream and KV included). Installed without recommends (Debian's prometheus would
# otherwise pull in a web UI stack).
TEST_PACKAGES := prometheus iptables nats-server
APT_FLAGS     ?=

.PHONY: setup deb-deps test-deps demo test test-unit test-unprivileged test-kernel soak lint typecheck bench clean deb \
        test-systemd

setup: $(STAMP)

deb-deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "setup: installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq $(APT_FLAGS) $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | deb-deps
	@$(MAKE) --no-print-directory deb-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(PY) -m demo

lint: setup
	$(VENV)/bin/ruff check aitherfwd lab tests benchmarks demo
	$(VENV)/bin/ruff format --check aitherfwd lab tests benchmarks demo

typecheck: setup
	$(VENV)/bin/mypy

test-unit: setup
	$(PY) -m pytest -q tests/unit tests/golden

# The unit suite without any privilege: every capability dropped (bounding, inheritable,
# ambient), so nothing in it may create namespaces, load rules or chown. The few unit tests
# that need a capability are marked `kernel` and run in the full suite as root.
test-unprivileged: setup
	setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all \
	    $(PY) -m pytest -q -p no:cacheprovider -m "not kernel" tests/unit tests/golden

test-deps:
	@$(MAKE) --no-print-directory deb-deps DEB_PACKAGES="$(TEST_PACKAGES)" \
	    APT_FLAGS=--no-install-recommends

test-kernel: setup test-deps
	$(PY) -m pytest -q tests/kernel

test: setup test-deps lint typecheck test-unprivileged
	$(PY) -m pytest -q
	AITHERFWD_SOAK_SECONDS=40 $(PY) -m pytest -q -m soak tests/kernel/test_soak.py

# The Debian package (packaging/build-deb.sh; its build dependencies come from
# packaging/debian/control) and the boot test of it in a systemd-nspawn container.
DEB_BUILD_TOOLS    := dpkg-dev debhelper lintian
SYSTEMD_TEST_TOOLS := debootstrap systemd-container

deb:
	@$(MAKE) --no-print-directory deb-deps DEB_PACKAGES="$(DEB_BUILD_TOOLS)"
	packaging/build-deb.sh

test-systemd: setup deb
	@$(MAKE) --no-print-directory deb-deps DEB_PACKAGES="$(SYSTEMD_TEST_TOOLS)"
	$(PY) -m pytest -q tests/systemd

# The 10-minute soak of issue 14 (tests/kernel/test_soak.py, marked `soak`). `make test`
# runs it for 40 s; the 10 minutes would crowd its 15, so .ci/run runs this after it.
soak: setup test-deps
	AITHERFWD_SOAK_SECONDS=600 $(PY) -m pytest -q -m soak tests/kernel/test_soak.py

bench: setup
	$(PY) -m benchmarks.run

# The false-positive suite (tests/kernel/test_false_positives.py) with every legitimate
# traffic pattern running FP_SECONDS (default 5 minutes) instead of `make test`'s 60 s.
.PHONY: soak-fp
FP_SECONDS ?= 300
soak-fp: setup
	AITHERFWD_FP_SECONDS=$(FP_SECONDS) $(PY) -m pytest -q -s tests/kernel/test_false_positives.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
