# pyiscsid — `make run` starts the daemon on a throwaway local tgt target; `make test` runs every check.
# Both install what they need first (Debian packages as root, then a .venv) and skip what is installed.

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
SOURCES     := $(wildcard protocol daemon client tests bench)
# Debian packages: the real peers of the tests (tgt, libiscsi, libnbd, qemu-img), what systemd-python
# builds with, and the Python tool chain itself.
APT_PACKAGES := tgt libiscsi-bin libnbd-bin qemu-utils qemu-block-extra libsystemd-dev pkg-config gcc iproute2 \
                python3 python3-venv python3-dev

.PHONY: all test lint typecheck unit integration run bench system-deps venv clean

all: test

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done | xargs); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "pyiscsid: missing Debian packages; as root run: apt-get install $$missing" >&2; exit 1; \
	  fi; \
	  echo "installing Debian packages: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | system-deps
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: system-deps $(STAMP)

lint: venv
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)

typecheck: venv
	$(VENV)/bin/mypy protocol

unit: venv
	$(VENV)/bin/pytest -q tests/protocol

test: venv lint typecheck
	$(VENV)/bin/pytest -q

run: venv
	$(VPY) -m pyiscsid.daemon.run_local

bench: venv
	$(VPY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
