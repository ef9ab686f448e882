# The two commands that matter: `make run` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup protos run test lint clean bench bench-middleware bench-cache bench-codec bench-flood bench-http interop-server bench-workers bench-client bench-setup bench-seed000 bench-seed001 bench-stacks

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,uvloop,platform]'
	# rapidocr pulls in opencv-python, which links libGL (absent on a minimal machine); the headless
	# build is the same cv2 without it, so `make run` serves OCR with no system packages
	$(BIN)/pip uninstall --quiet -y opencv-python
	$(BIN)/pip install --quiet --no-deps --force-reinstall opencv-python-headless
	# the example platform and gen/ are not in the grpcstack wheel: put them on this venv's path
	printf '%s\n%s\n' "$(CURDIR)/src" "$(CURDIR)" > \
		"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/grpcstack-repository.pth"
	touch $(STAMP)

# ONE protoc run over every proto into an emptied gen/ (a second run would overwrite shared modules).
protos: $(STAMP)
	$(BIN)/grpcstack protos --proto-dir protos --out gen

run: $(STAMP)
	$(BIN)/grpcstack serve platform_services.server:PlatformServer

# grpc.testing.TestService for any implementation's interop client (INTEROP_PORT, default 10000)
INTEROP_PORT ?= 10000
interop-server: $(STAMP)
	$(BIN)/grpcstack serve platform_services.interop:InteropServer --port $(INTEROP_PORT)

# tests/provision.py first: the other Pythons' venvs, Node's packages and the wheelhouse some tests use,
# cached outside the tree, each install with its own bound (never under a test's timeout)
test: $(STAMP)
	$(BIN)/python tests/provision.py
	$(BIN)/python -m pytest -q

# EchoRequest(message="hello"), hex-encoded
ECHO_REQUEST := 0a0568656c6c6f

bench: bench-middleware bench-cache bench-codec bench-flood bench-workers bench-client bench-http bench-stacks bench-seed000 bench-seed001

# the seed tables and server-vs-server: peer baselines (grpcio, FastAPI) and charts need the bench
# extra, load needs h2load (Debian nghttp2-client); results go to docs/bench/<mode>/ (README links them)
BENCH_STAMP := $(VENV)/.bench-installed
bench-setup: $(BENCH_STAMP)
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,uvloop,platform,bench]'
	@command -v h2load >/dev/null || echo "h2load missing: apt-get install -y nghttp2-client"
	touch $(BENCH_STAMP)

bench-stacks: $(BENCH_STAMP)
	$(BIN)/grpcstack bench stacks

bench-seed000: $(BENCH_STAMP)
	$(BIN)/grpcstack bench seed000

bench-seed001: $(BENCH_STAMP)
	$(BIN)/grpcstack bench seed001

# OCRRequest(private_image_path="scan.png"), hex-encoded
OCR_REQUEST := 12087363616e2e706e67

bench-codec: $(STAMP)
	$(BIN)/grpcstack bench codec \
		--fixture platform_services.bench_fixtures:ocr_response_50 \
		--fixture platform_services.bench_fixtures:small_message \
		--rpc-target platform_services.bench_fixtures:CannedOcrServer \
		--rpc-method /ocr.v1.OCRService/ExtractText --rpc-request-hex $(OCR_REQUEST)

# health p99 on one connection while another floods rapid resets (the 100 ms target)
bench-flood: $(STAMP)
	$(BIN)/grpcstack bench flood

# ExtractText (canned 50-box result) over gRPC, Connect JSON (HTTP/1.1, h2c) and seed 001's FastAPI
bench-http: $(STAMP)
	$(BIN)/grpcstack bench http --request-hex $(OCR_REQUEST) \
		--request-json '{"private_image_path": "scan.png"}'

bench-cache: $(STAMP)
	$(BIN)/grpcstack bench cache

bench-middleware: $(STAMP)
	$(BIN)/grpcstack bench middleware --target platform_services.echo:EchoServer \
		--method /echo.v1.EchoService/Echo --request-hex $(ECHO_REQUEST)

# 2 worker processes vs 1 on one port (issue 19); 64 connections so the kernel's per-connection
# spread over the workers is even enough (16 leave one worker ~60% of the calls), 320 in flight
bench-workers: $(STAMP)
	$(BIN)/grpcstack bench workers --target platform_services.echo:EchoServer \
		--method /echo.v1.EchoService/Echo --request-hex $(ECHO_REQUEST) --workers 2 \
		--connections 64 --streams 5

# grpcstack Client vs grpcio's asyncio client vs a plain grpclib Channel, one server
bench-client: $(STAMP)
	$(BIN)/grpcstack bench client --target platform_services.echo:EchoServer \
		--method /echo.v1.EchoService/Echo --request-hex $(ECHO_REQUEST)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) .pytest_cache
