# onvm-cluster: `make demo` and `make test` on a fresh machine.
# `deps` is idempotent: Debian packages (as root), the virtual environment
# in .venv with pinned versions, Ryu 4.34 made to work on Python 3.11, the
# Cython build, huge pages where the machine lets us reserve them.

PYTHON   ?= /usr/bin/python3
VENV     := .venv
PY       := $(VENV)/bin/python
PIP      := $(VENV)/bin/pip --disable-pip-version-check -q
SITE_CMD := $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
APT_PKGS := libdpdk-dev dpdk openvswitch-switch mininet etcd-server \
            libhyperscan-dev tcpdump iputils-ping libpcap-dev pkg-config \
            python3-venv python3-dev iproute2 ethtool openssl
HUGEPAGES ?= 512
TOPOLOGY ?= topologies/leaf-spine.yaml

.PHONY: all deps apt venv build hugepages demo test bench clean

all: build

deps: apt venv build hugepages

apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: missing Debian packages: $$missing; run as root or apt-get install them"; exit 1; fi; \
	  echo "make deps: installing $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.deps: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "setuptools<67" wheel "Cython==3.0.12"
	$(PIP) install -r requirements.txt
	# Ryu 4.34's sdist only builds with setuptools<67 and no isolation.
	$(PIP) install --no-build-isolation ryu==4.34
	# eventlet 0.33 lacks eventlet.wsgi.ALREADY_HANDLED, which Ryu imports:
	# onvm_compat supplies it for every interpreter of the venv (ryu-manager too).
	# Mininet's Python package comes from Debian; link only that package in.
	site=$$($(SITE_CMD)) && test -d "$$site" && \
	  echo "import importlib.util as _u; _u.find_spec('onvm_compat') and __import__('onvm_compat')" > "$$site/zz_onvm_compat.pth" && \
	  ln -sfn /usr/lib/python3/dist-packages/mininet "$$site/mininet"
	touch $@

venv: $(VENV)/.deps

build: venv
	$(PIP) install --no-build-isolation --no-deps -e .

hugepages:
	@if [ "$$(id -u)" = 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then \
	  have=$$(cat /proc/sys/vm/nr_hugepages); \
	  [ "$$have" -ge $(HUGEPAGES) ] || echo $(HUGEPAGES) > /proc/sys/vm/nr_hugepages 2>/dev/null || true; \
	  mkdir -p /dev/hugepages; \
	  mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || true; \
	fi; echo "huge pages: $$(cat /proc/sys/vm/nr_hugepages) x 2 MiB reserved"

demo: deps
	$(VENV)/bin/onvm demo

test: deps
	$(PY) -m pytest -q -ra --durations=25

# The figures of BENCHMARKS.md (failover needs a few minutes: `onvm bench failover`).
bench: deps
	$(VENV)/bin/onvm bench fastpath --chain firewall,monitor,forward --packets 20000000
	for args in "--flows 1000000" "--flows 1000000 --mix imix" \
	    "--flows 1000000 --new-flows 10000 --flow-idle 2 --packets 60000000"; do \
	  $(VENV)/bin/onvm bench fastpath --chain firewall,monitor,forward --packets 20000000 \
	    $$args || exit 1; done
	$(VENV)/bin/onvm bench flowcost --chain firewall,monitor,forward
	$(VENV)/bin/onvm bench keytab
	$(VENV)/bin/onvm bench fastpath --chain firewall,monitor,forward --mode process --packets 5000000
	$(VENV)/bin/onvm bench fastpath --chain monitor --python --packets 3000000
	for nf in forward monitor firewall firewall-stateful ratelimit ddos ids lb nat; do \
	  $(VENV)/bin/onvm bench fastpath --chain $$nf --packets 10000000 || exit 1; done
	if [ "$$(nproc)" -ge 2 ]; then $(VENV)/bin/onvm bench fastpath \
	  --chain firewall,monitor,forward --cores 2 --packets 20000000 || exit 1; fi
	$(VENV)/bin/onvm bench cycles --packets 20000000
	$(VENV)/bin/onvm bench weights
	$(VENV)/bin/onvm bench placement

clean:
	rm -rf build *.egg-info host_agent/*.c host_agent/*.so nflib/*.c nflib/*.so nfs/*.c nfs/*.so
