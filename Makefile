# AIFI — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages that the tests talk to as real peers.
PEERS := orthanc orthanc-dicomweb dcmtk dicom3tools postgresql nginx chromium tinyproxy prometheus

.PHONY: demo test lint peers venv clean bench constraints dist

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

peers:
	@missing=""; \
	for p in $(PEERS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing peers:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "peers missing (run as root to install):$$missing"; \
	  fi; \
	fi

demo: $(STAMP)
	$(BIN)/aifi demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# The suite runs a test file to a worker (files share their costly fixtures: a built release,
# a PostgreSQL server), one worker more than the cores it may use: most tests spend much of
# their time waiting on a peer (Orthanc, PostgreSQL, a command they started), so a worker per
# core left the cores a third idle. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= $(shell echo $$(( $$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1) + 1 )))
test: $(STAMP) peers lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP) peers
	$(BIN)/python benchmarks/e2e.py

# The release a hospital installs from without internet access: the aifi wheel and a wheel of
# every dependency at its pinned version, for each of DIST_PYTHONS on this machine's
# architecture, with their SHA-256 sums. docs/hospital-guide.md, section 2. The Pythons are
# those of the hosts the guide names: Debian 12 has 3.11, Ubuntu 24.04 3.12, Debian 13 3.13.
# One download per Python, side by side, each into a folder of its own (they share wheels).
# The aifi wheel carries the last commit's time, so the same commit builds the same bytes.
DIST ?= dist
DIST_PYTHONS ?= 3.11 3.12 3.13
dist: $(STAMP)
	rm -rf $(DIST) build
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 315532800) \
		$(BIN)/pip wheel -q --no-deps -w $(DIST) .
	pids=; for version in $(DIST_PYTHONS); do \
		$(BIN)/pip download -q -c constraints.txt --only-binary=:all: \
			--python-version $$version -d $(DIST)/.$$version . > $(DIST)/.$$version.log 2>&1 & \
		pids="$$pids $$!"; \
	done; \
	failed=0; for pid in $$pids; do wait $$pid || failed=1; done; \
	for version in $(DIST_PYTHONS); do cat $(DIST)/.$$version.log >&2; done; \
	test $$failed = 0
	for version in $(DIST_PYTHONS); do cp -n $(DIST)/.$$version/*.whl $(DIST)/; done
	rm -rf $(DIST)/.[0-9]*
	cd $(DIST) && sha256sum *.whl > SHA256SUMS

# Move the pinned versions to the newest that pyproject.toml allows, in a venv of their own;
# then run make test before committing the new constraints.txt.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install -q --upgrade pip
	.venv-constraints/bin/pip install -q -e '.[test]'
	{ sed -n '1,2p' constraints.txt; .venv-constraints/bin/pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build $(DIST)
