# Everything installs from nothing: Debian's prometheus package (for promtool), a JDK and Maven
# (for the Apache Kafka the tests run), a new .venv, pip, and Kafka's jars from Maven Central.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST := $(PY) -m pytest

.PHONY: install demo test unit integration reliability bench lint clean

$(STAMP): pyproject.toml deploy/kafka/pom.xml
	command -v promtool >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		openjdk-17-jdk-headless maven; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,ibm,braket]'
	$(PY) -m streams.brokers.kafka_local 4.1 3.9
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/qlane demo

test: install
	$(PYTEST) -q -m "not slow" -n 2 --dist loadgroup --durations=25 tests

unit: install
	$(PYTEST) -q tests/unit

integration: install
	$(PYTEST) -q tests/integration

# The full runs: 1,000 jobs under >= 5 SIGKILLs, 10,000 fuzzed bad inputs, ...
reliability: install
	QLANE_RELIABILITY_FULL=1 $(PYTEST) -q -s tests/reliability

# Every broker available (Tansu; Apache Kafka when java and its cached jars are there).
# e.g. make bench BENCH_ARGS="--backlog 10000" or BENCH_ARGS="--jobs 24 --quick"
bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
