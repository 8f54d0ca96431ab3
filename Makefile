# Sluice: two commands.
#   make run    set up what is missing, build, start the relay with its embedded defaults
#   make test   set up what is missing, build, run every test, then the core tests under
#               ThreadSanitizer, the whole suite under AddressSanitizer + UBSan, the lock annotations
#               with clang and every parser a client reaches under libFuzzer for ~20 s each
# Other targets: make build, make bench, make soak, make fuzz, make format, make tidy, make clean.

SHELL        := /bin/bash
BUILD_TYPE   ?= Release
JOBS         ?= $(shell nproc)
# Warnings are errors here as in CI (.ci/run): the same flags, so ccache serves CI what a local
# build compiled.
SLUICE_WERROR ?= ON
CMAKE_COMMON := -G Ninja -DSLUICE_WERROR=$(SLUICE_WERROR) -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
# Stress tests: items per test under the sanitizers (slower by 5-20x); `make soak` runs long.
SAN_STRESS_ITEMS ?= 200000
SOAK_ITEMS   ?= 20000000
SOAK_SECONDS ?= 600
SOAK_CHURN_CYCLES ?= 1000
# libFuzzer: seconds per harness in `make fuzz`, and in `make test`.
FUZZ_SECONDS ?= 300
TEST_FUZZ_SECONDS ?= 20
# ccache: a clone at another path (CI's clean clone) reuses what any other clone compiled.
export CCACHE_BASEDIR   := $(CURDIR)
export CCACHE_NOHASHDIR := 1
# The four builds (release, ThreadSanitizer, ASan + UBSan, libFuzzer) share one cache: near
# ccache's default 5 GB the first ones would be evicted by the last and CI would compile cold.
export CCACHE_MAXSIZE ?= 20G
# The sanitizer and fuzzer trees: -O1 (as the sanitizers' docs advise) with line tables only
# (-g1: file and line in every report, without full debug info, which doubles the compile).
SAN_FLAGS    := -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
                -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG"
CTEST_ALL    := ctest --output-on-failure --timeout 300 -j $(JOBS)
# Entries labelled "long" (the cluster's 10^6-item lossless run) run in `make soak` only.
CTEST        := $(CTEST_ALL) -LE long

.PHONY: all deps build package install run demo test test-release check-locks test-tsan test-asan test-fuzz fuzz fuzz-build soak bench bench-core bench-broadcast bench-relay bench-cluster bench-media bench-dashboard bench-python format tidy clean

all: build

deps:
	@scripts/install-deps.sh

build/build.ninja: | deps
	cmake -S . -B build $(CMAKE_COMMON) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

build: deps build/build.ninja
	cmake --build build -j $(JOBS)

# A Debian package (build/sluice_<version>_<arch>.deb): the relay, its systemd unit, the
# libraries, headers, CMake package and pkg-config files. `sudo apt install ./build/sluice_*.deb`.
package: build
	cd build && cpack -G DEB

# Installs into PREFIX (default /usr/local): libraries, headers, CMake package, pkg-config, sluice.
PREFIX ?= /usr/local
install: build
	cmake --install build --prefix $(PREFIX)

# The relay with its embedded defaults (gRPC on 127.0.0.1:7400); Ctrl-C stops it.
run: build
	./build/src/cli/sluice serve

# The relay with synthetic traffic that shows every policy on its dashboard (the URL is printed).
demo: build
	./build/src/cli/sluice serve --demo

test: test-release test-tsan test-asan test-fuzz

test-release: build
	cd build && $(CTEST)

# clang's thread-safety analysis over src/ (the core, the relay, the clients, media, the CLI): a member annotated
# SLUICE_GUARDED_BY touched without its lock is an error (include/sluice/detail/thread_annotations.hpp).
# clang builds the libFuzzer tree with the analysis on, as errors (CMakeLists.txt), so this is
# that tree's library build, cached by ccache; `make test` gets it from test-fuzz.
LOCKED_TARGETS = sluice_relay sluice_client sluice_media sluice_cli
check-locks: deps
	$(FUZZ_CONFIGURE)
	cmake --build build-fuzz --target $(LOCKED_TARGETS) -j $(JOBS)
	@echo "check-locks: src/ (core, relay, client, media, CLI) compiles with clang -Wthread-safety -Werror"

# ThreadSanitizer covers the core (label "core"): everything with threads and atomics; and the
# relay's WebSocket sessions (plaintext and TLS), whose viewers run on several event-loop
# threads, its frame pool, whose blocks come back from any thread, and the subscriber judgement's
# WebSocket tests (races inside Debian's uninstrumented gRPC and Abseil are suppressed:
# tests/tsan.supp; tests with a gRPC client in the process stay out: gRPC's inlined headers hand
# call state between threads through its uninstrumented completion queue, which TSan reports).
TSAN_ENV = TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp"
test-tsan: deps
	cmake -S . -B build-tsan $(CMAKE_COMMON) $(SAN_FLAGS) \
	  -DSLUICE_SANITIZE=thread -DSLUICE_BUILD_BENCH=OFF
	cmake --build build-tsan --target tsan_tests -j $(JOBS)
	cd build-tsan && SLUICE_STRESS_ITEMS=$(SAN_STRESS_ITEMS) $(TSAN_ENV) $(CTEST) -L core
	cd build-tsan && $(TSAN_ENV) $(CTEST) \
	  -R '^(RelayWs\.|Judgement\.(Late|AWindowed|BadAck|ASubscribersOversized)|FrameSizes/StoppedReader\.|RelayTls\.(Https|MutualTlsOnTheHttp)|CoalescingSocket\.|FrameBuffer\.|FramePool\.)'

# AddressSanitizer + UndefinedBehaviorSanitizer cover the whole suite.
test-asan: deps
	cmake -S . -B build-asan $(CMAKE_COMMON) $(SAN_FLAGS) \
	  -DSLUICE_SANITIZE=address -DSLUICE_BUILD_BENCH=OFF
	cmake --build build-asan -j $(JOBS)
	cd build-asan && SLUICE_STRESS_ITEMS=$(SAN_STRESS_ITEMS) ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" \
	  LSAN_OPTIONS="suppressions=$(CURDIR)/tests/lsan.supp" \
	  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" $(CTEST)

# libFuzzer harnesses (fuzz/): clang 14, everything under ASan + UBSan; see scripts/fuzz.sh.
FUZZ_CONFIGURE = CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz $(CMAKE_COMMON) \
	  $(SAN_FLAGS) -DSLUICE_SANITIZE=fuzzer -DSLUICE_BUILD_TESTS=OFF \
	  -DSLUICE_BUILD_BENCH=OFF
fuzz-build: deps
	$(FUZZ_CONFIGURE)
	cmake --build build-fuzz --target fuzzers $(LOCKED_TARGETS) -j $(JOBS)
test-fuzz: fuzz-build
	scripts/fuzz.sh build-fuzz $(TEST_FUZZ_SECONDS)
fuzz: fuzz-build
	scripts/fuzz.sh build-fuzz $(FUZZ_SECONDS)

# The stress tests at soak scale and the relay soaks at benchmark scale (R3: 10 min, R5: 1000
# cycles; 100 WebRTC viewers coming and going for 10 min), release build.
soak: build
	cd build && SLUICE_STRESS_ITEMS=$(SOAK_ITEMS) SLUICE_SOAK_SECONDS=$(SOAK_SECONDS) \
	  SLUICE_CHURN_CYCLES=$(SOAK_CHURN_CYCLES) $(CTEST_ALL) -L "stress|soak|long" --timeout 3600

# Every benchmark against its peers (a few minutes): core C1-C3, broadcast B1-B3, relay R1, R2, R6,
# cluster R7, media M1.
bench: build
	./build/bench/sluice_core_bench
	./build/bench/sluice_broadcast_bench
	./build/bench/sluice_relay_bench
	./build/bench/sluice_fanout_bench
	./build/bench/sluice_cluster_bench
	./build/bench/sluice_whep_bench

bench-core: build
	./build/bench/sluice_core_bench

bench-broadcast: build
	./build/bench/sluice_broadcast_bench

# The relay over gRPC and WebSocket against nats-server + nats.c: R1 throughput, R2 latency,
# R6 fan-out to 10, 100, 1000 subscribers.
bench-relay: build
	./build/bench/sluice_relay_bench
	./build/bench/sluice_fanout_bench

# R7: relays sharing a cluster topic through a 3-node NATS cluster, against NATS alone.
bench-cluster: build
	./build/bench/sluice_cluster_bench

# M1: what each WebRTC (WHEP) viewer costs the server, against GStreamer alone (tee -> webrtcbins).
bench-media: build
	./build/bench/sluice_whep_bench
	SLUICE_BINARY=build/src/cli/sluice node web/bench/whep_latency.mjs

# What the Python SDK costs over raw python3-websockets (python/bench/sdk_overhead.py).
bench-python: build
	SLUICE_BINARY=build/src/cli/sluice /usr/bin/python3 python/bench/sdk_overhead.py

# What the dashboard costs the relay: its CPU idle and under a 1 KiB stream, 0 and 5 dashboards.
bench-dashboard: build
	cd web && SLUICE_BINARY=../build/src/cli/sluice node bench/dashboard_cost.mjs

format:
	git ls-files '*.hpp' '*.cpp' | xargs clang-format -i

tidy: build
	git ls-files 'src/*.cpp' | xargs clang-tidy -p build --quiet

clean:
	rm -rf build build-tsan build-asan
