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
APT_PACKAGES := tgt libiscsi-bin libnbd-bin qemu-utils qemu-block-extra libsystemd-dev pkg-config gcc iproute2 systemd \
                python3 python3-venv python3-dev

.PHONY: all test lint typecheck unit integration run bench bench-deps system-deps venv clean install

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

# protocol/ on its own (it imports only itself); daemon/ and client/ import pyiscsid.*, so mypy
# sees them through a tree of links that has the installed package's shape.
typecheck: venv
	$(VENV)/bin/mypy protocol
	@mkdir -p .typecheck/pyiscsid
	@for d in protocol daemon client; do ln -sfn $(CURDIR)/$$d .typecheck/pyiscsid/$$d; done
	@ln -sfn $(CURDIR)/bench .typecheck/bench
	cd .typecheck && MYPYPATH=$(CURDIR)/.typecheck $(CURDIR)/$(VENV)/bin/mypy \
	    --config-file $(CURDIR)/pyproject.toml --namespace-packages --explicit-package-bases \
	    -p pyiscsid.daemon -p pyiscsid.client -p bench

unit: venv
	$(VENV)/bin/pytest -q tests/protocol

test: venv lint typecheck
	$(VENV)/bin/pytest -q

run: venv
	$(VPY) -m pyiscsid.daemon.run_local

# make bench only: fio (its nbd engine drives the daemon's NBD exports). BENCH_ARGS passes options,
# e.g. make bench BENCH_ARGS='--quick' or BENCH_ARGS='--only nbd,login' (python -m bench --help).
BENCH_PACKAGES := fio
BENCH_ARGS  ?=

bench-deps: system-deps
	@missing=$$(for p in $(BENCH_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done | xargs); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "pyiscsid: make bench needs Debian packages; as root run: apt-get install $$missing" >&2; exit 1; \
	  fi; \
	  echo "installing Debian packages for the bench: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

bench: venv bench-deps
	$(VPY) -m bench $(BENCH_ARGS)

# make install (as root): pyiscsid in $(SBINDIR) and pyiscsiadm in $(BINDIR), two-line wrappers that
# exec this checkout's .venv (which stays editable: keep the checkout where it is); the unit files
# in $(UNITDIR) with ExecStart= pointing at that wrapper; the README in $(DOCDIR). A checkout under
# /home, /root or /run/user gets a drop-in that relaxes ProtectHome=yes to read-only so that the
# service can reach it. Then `systemctl daemon-reload`, when systemd runs and UNITDIR is its own.
# DESTDIR stages the tree elsewhere; PREFIX and UNITDIR move it (the tests use both).
# Then: systemctl enable --now pyiscsid.socket pyiscsid.service
PREFIX      ?= /usr/local
SBINDIR     ?= $(PREFIX)/sbin
BINDIR      ?= $(PREFIX)/bin
DOCDIR      ?= $(PREFIX)/share/doc/pyiscsid
UNITDIR     ?= /etc/systemd/system
DROPIN      := $(DESTDIR)$(UNITDIR)/pyiscsid.service.d/50-checkout-in-home.conf

install: venv
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR)
	printf '#!/bin/sh\nexec %s "$$@"\n' '$(CURDIR)/$(VENV)/bin/pyiscsid' >$(DESTDIR)$(SBINDIR)/pyiscsid
	printf '#!/bin/sh\nexec %s "$$@"\n' '$(CURDIR)/$(VENV)/bin/pyiscsiadm' >$(DESTDIR)$(BINDIR)/pyiscsiadm
	chmod 0755 $(DESTDIR)$(SBINDIR)/pyiscsid $(DESTDIR)$(BINDIR)/pyiscsiadm
	sed -e 's|^ExecStart=/usr/local/sbin/pyiscsid|ExecStart=$(SBINDIR)/pyiscsid|' \
	    -e 's|file:///usr/local/share/doc/pyiscsid/|file://$(DOCDIR)/|' \
	    unitfiles/pyiscsid.service >$(DESTDIR)$(UNITDIR)/pyiscsid.service
	sed -e 's|file:///usr/local/share/doc/pyiscsid/|file://$(DOCDIR)/|' \
	    unitfiles/pyiscsid.socket >$(DESTDIR)$(UNITDIR)/pyiscsid.socket
	chmod 0644 $(DESTDIR)$(UNITDIR)/pyiscsid.service $(DESTDIR)$(UNITDIR)/pyiscsid.socket
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	@case '$(CURDIR)/' in \
	  /home/*|/root/*|/run/user/*) \
	    install -d $(dir $(DROPIN)); \
	    printf '[Service]\n# the daemon runs from %s\nProtectHome=read-only\n' '$(CURDIR)' >$(DROPIN); \
	    echo "wrote $(DROPIN): ProtectHome=read-only, as the checkout is under a home directory";; \
	  *) rm -f $(DROPIN);; \
	esac
	@if [ -z '$(DESTDIR)' ] && [ '$(UNITDIR)' = /etc/systemd/system ] && [ -d /run/systemd/system ]; then \
	  systemctl daemon-reload; fi
	@echo "installed; enable with: systemctl enable --now pyiscsid.socket pyiscsid.service"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
