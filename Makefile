# The two commands: `make run` and `make test`. Both build .venv and install vsand.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
STATE   ?= var/demo
PYTEST_ARGS ?=
# Three pytest workers, one test module each at a time (pytest-xdist): most tests wait
# on real daemons, clients and Ceph: on 2 cores the suite took 8 min 5 s with three
# (idle, 2026-12-04). PYTEST_WORKERS= (empty) runs the suite in one process.
# The 20 slowest tests are listed at the end.
PYTEST_WORKERS ?= -n 3 --dist loadfile

# Debian packages the interop tests drive (real NBD clients, fio, FUSE, filesystems),
# the kernel-client test's QEMU guest (tests/kernel), the TLS tests' test CA (openssl),
# the status page's browser test (chromium) and the RADOS benchmark's qemu-nbd on RBD
# (qemu-block-extra).
DEB_PKGS := libnbd-bin python3-libnbd nbdkit nbdfuse nbd-client qemu-utils fio fuse3 e2fsprogs openssl \
            qemu-system-x86 socat busybox-static cpio strace chromium chromium-driver \
            qemu-block-extra
# Ceph for the RADOS tests (tests/rados: one throw-away cluster per run, scripts/rados_up.sh;
# plugins/rados binds librados2 through ctypes). Without recommends: 80 packages, not 93.
CEPH_PKGS := ceph-mon ceph-osd ceph-mgr ceph-common librados2

.PHONY: run test venv deps apt-install bench check clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,fast]'
	touch $@

venv: $(STAMP)

# Installs missing Debian packages when run as root; otherwise the tests that need
# them skip with the reason.
deps:
	@$(MAKE) -s apt-install PKGS="$(DEB_PKGS)" APT_OPTS=
	@$(MAKE) -s apt-install PKGS="$(CEPH_PKGS)" APT_OPTS=--no-install-recommends

# apt-install PKGS="..." [APT_OPTS=...]: the packages of PKGS not yet installed
apt-install:
	@missing=""; for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
	    install -y -qq $(APT_OPTS) $$missing >/dev/null; \
	else echo "not root: tests needing$$missing will skip"; fi

run: venv
	$(BIN)/python scripts/run_demo.py $(STATE)

test: venv deps
	$(BIN)/python -m pytest $(PYTEST_WORKERS) --durations=20 $(PYTEST_ARGS)

bench: venv
	$(BIN)/python scripts/bench_mapmem.py

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
