# runner: `make help` lists the targets.
PYTHON ?= python
PORT ?= 5000
SERVER_PORT ?= 5001

.PHONY: help install run sweep ui server server-postgres test tutorial test-fast bench bench-quick

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: ## install runner, the test tools and the cluster launchers; the system packages (SLURM, PostgreSQL, Graphviz, Chromium: root)
	$(PYTHON) -m pip install '.[test,cluster]'
	bash .ci/services.sh install

run: ## train the default experiment (seed_cnn on the bundled digits) and log it to ./mlflow.db
	runner

sweep: ## the tutorial's comparison on digits: three model styles x fit/custom, jobs in parallel
	runner -m hydra/launcher=parallel model-style=sequential,functional,subclass loop=fit,custom

ui: ## the MLflow UI for ./mlflow.db on http://127.0.0.1:$(PORT) (localhost only)
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(PORT)

server: ## an MLflow tracking server on http://127.0.0.1:$(SERVER_PORT), SQLite-backed (Ctrl-C stops it)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --host 127.0.0.1 --port $(SERVER_PORT) --workers 1 \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow-server.db --artifacts-destination $(CURDIR)/mlartifacts-server

server-postgres: ## the same on PostgreSQL (PG_URI; default .ci/services.sh's), artifacts in ARTIFACTS, a 40-connection pool
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=20 MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=20 \
	exec mlflow server --host 127.0.0.1 --port $(SERVER_PORT) --workers 1 \
		--backend-store-uri "$${PG_URI:-$$(bash .ci/services.sh start postgres)}" \
		--artifacts-destination $(or $(ARTIFACTS),$(CURDIR)/mlartifacts-server)

test: ## every test, the slow (real training) ones included, on two workers
	$(PYTHON) -m pytest -n 2

tutorial: ## the tutorial's result reproduced: experiment=seed_mnist, 5 epochs of real MNIST (7 to 15 minutes)
	$(PYTHON) -m pytest -m tutorial tests/test_mnist.py

test-fast: ## the fast tests only, on two workers (about 2 minutes)
	$(PYTHON) -m pytest -n 2 -m "not slow"

bench: ## the benchmarks against plain Keras and their targets (about 20 minutes here, see BENCHMARKS.md; needs ../shared/data/mnist.npz)
	$(PYTHON) bench/bench.py
	$(PYTHON) bench/data_memory.py  # image_folder peak RSS at 2,000 and 20,000 images (1 minute)

bench-quick: ## every benchmark section at CI size (a few minutes): checks that they run, the figures are rough
	$(PYTHON) -m pytest -m bench tests/test_bench.py  # bench/bench.py --quick, every section checked for its figures
