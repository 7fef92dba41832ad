# One entry point for people and CI: `make serve`, `make test`.
# Stamp files keep repeated runs fast: the venv is reinstalled only when pyproject.toml changes
# and the gRPC code is regenerated only when the proto changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.clipmatch-installed
BENCH_INSTALLED := $(VENV)/.clipmatch-bench-installed
PROTO := protos/clipmatch/v1/clipmatch.proto
GENERATED := clipmatch/v1/clipmatch_pb2.py
PACKAGE_INITS := clipmatch/__init__.py clipmatch/v1/__init__.py

DATA_DIR ?= ./data
LISTEN ?= 127.0.0.1:50051
PYTEST_ARGS ?=
# Source checkouts of the two anchors no registry ships (see BENCHMARKS.md).
AUDFPRINT ?= ../audfprint
OLAF ?= ../Olaf

.PHONY: serve test lint proto fuzz crash soak bench bench-quick bench-anchors bench-anchors-quick bench-scale clean

serve: $(INSTALLED) $(GENERATED)
	$(VENV)/bin/clipmatch serve --data-dir $(DATA_DIR) --listen $(LISTEN)

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(INSTALLED) $(GENERATED)
	$(VENV)/bin/ruff check .

proto: $(GENERATED)

# Hostile input against the decoders and every RPC (tests/fuzz.py; `make test` runs 280 cases).
fuzz: $(INSTALLED) $(GENERATED)
	$(PY) -m tests.fuzz --cases 10000

# SIGKILL during bulk ingests (tests/crash.py; `make test` runs 3 trials).
crash: $(INSTALLED) $(GENERATED)
	$(PY) -m tests.crash --trials 50

# 32 concurrent clients registering, matching, listing and deleting (tests/soak.py).
soak: $(INSTALLED) $(GENERATED)
	$(PY) -m tests.soak --clients 32 --seconds 120

bench: $(BENCH_INSTALLED) $(GENERATED)
	bash benchmarks/setup.sh anchors
	$(PY) -m benchmarks.audio_grid --write-md
	$(PY) -m benchmarks.video_corpus
	$(PY) -m benchmarks.video_grid --write-md
	$(PY) -m benchmarks.anchor_grid --audfprint $(AUDFPRINT) --olaf $(OLAF) --write-md
	$(PY) -m benchmarks.anchor_grid --grid video --write-md
	$(PY) -m benchmarks.ingest_scaling --write-md
	$(PY) -m benchmarks.scale --write-md
	$(PY) -m benchmarks.scale --modality video --write-md
	$(PY) -m benchmarks.load --write-md

bench-quick: $(BENCH_INSTALLED) $(GENERATED)
	bash benchmarks/setup.sh
	$(PY) -m benchmarks.audio_grid --quick
	$(PY) -m benchmarks.video_corpus
	$(PY) -m benchmarks.video_grid --quick
	$(PY) -m benchmarks.ingest_scaling --quick
	$(PY) -m benchmarks.load --quick

bench-scale: $(BENCH_INSTALLED) $(GENERATED)
	bash benchmarks/setup.sh
	$(PY) -m benchmarks.scale --write-md
	$(PY) -m benchmarks.scale --modality video --write-md
	$(PY) -m benchmarks.load --write-md

bench-anchors: $(BENCH_INSTALLED) $(GENERATED)
	bash benchmarks/setup.sh anchors
	$(PY) -m benchmarks.anchor_grid --audfprint $(AUDFPRINT) --olaf $(OLAF) --write-md
	$(PY) -m benchmarks.video_corpus
	$(PY) -m benchmarks.anchor_grid --grid video --write-md

bench-anchors-quick: $(BENCH_INSTALLED) $(GENERATED)
	bash benchmarks/setup.sh anchors
	$(PY) -m benchmarks.anchor_grid --quick --audfprint $(AUDFPRINT) --olaf $(OLAF)
	$(PY) -m benchmarks.video_corpus
	$(PY) -m benchmarks.anchor_grid --grid video --quick

$(PY):
	$(PYTHON) -m venv $(VENV)

# The generated package must exist before the editable install lists it.
$(PACKAGE_INITS):
	mkdir -p $(@D)
	touch $@

$(INSTALLED): pyproject.toml $(PACKAGE_INITS) | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BENCH_INSTALLED): $(INSTALLED)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

$(GENERATED): $(PROTO) $(INSTALLED)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTO)

clean:
	rm -rf clipmatch .pytest_cache .ruff_cache *.egg-info $(INSTALLED) $(BENCH_INSTALLED)
