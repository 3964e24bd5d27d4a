# memeguard — `make help` lists the targets.
.DEFAULT_GOAL := help
VENV := .venv
PYTEST_ARGS ?=

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml uv.lock scripts/install.sh scripts/install_kafka.sh scripts/install_mpnet.sh ops/kafka/pom.xml
	bash scripts/install.sh

install: $(VENV)/.installed  ## install redis-server and the Python environment (.venv)

demo: install  ## end to end: embedded broker + redis, default bundle, 63 real memes -> verdicts
	$(VENV)/bin/memeguard demo

browser:  ## Debian chromium + chromium-driver, for the review page's browser test
	bash scripts/install_browser.sh

helm:  ## the pinned Helm (built from its Go module), for the chart test
	bash scripts/install_helm.sh

test: install browser helm  ## the whole test suite (real broker, real redis, real worker processes)
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

lint:  ## ruff
	$(VENV)/bin/ruff check schemas consumer models exporters scoring testkit tests bench research

bundle: install  ## train the offline default model and export its bundle
	$(VENV)/bin/memeguard bundle --out .cache/bundles/default

down:  ## stop the embedded broker and redis
	$(VENV)/bin/memeguard dev down

.PHONY: help install browser helm demo test lint bundle down
