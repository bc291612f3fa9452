# task-executor: `make run` starts the host on 127.0.0.1:5758 with its data
# in ./.data; `make test` runs vet and every test (with the race detector).

GO      ?= go
# The shim is C; musl makes its start-up several times cheaper than glibc
# (see sdk/shim/csrc/shim.c). Either works.
SHIM_CC ?= $(shell command -v musl-gcc || echo cc)
BIN     := bin
# Every directory under examples/plugins/ is an example plugin, built into
# bin/examples/, outside any plugin directory: copy one in to install it.
EXAMPLES := $(patsubst examples/plugins/%/,%,$(sort $(dir $(wildcard examples/plugins/*/main.go))))

.PHONY: build run test bench proto clean

# One executable: the host, its built-in runtimes (which it starts again as
# plugins) and the shim, compiled here and embedded through go build's
# -overlay, so the source tree never holds a binary.
build:
	@mkdir -p $(BIN)/examples
	$(SHIM_CC) -O2 -static -Wall -Wno-format-truncation -o $(BIN)/task-executor-shim sdk/shim/csrc/shim.c
	printf '{"Replace":{"%s":"%s"}}' "$(CURDIR)/cmd/task-executor/task-executor-shim" "$(CURDIR)/$(BIN)/task-executor-shim" > $(BIN)/.overlay.json
	$(GO) build -tags embedshim -overlay $(BIN)/.overlay.json -o $(BIN)/task-executor ./cmd/task-executor
	$(foreach p,$(EXAMPLES),$(GO) build -o $(BIN)/examples/$(p) ./examples/plugins/$(p) &&) true
	@# The host refuses plugins others can write to (a umask of 002 makes them so).
	chmod -R go-w $(BIN)/examples

run: build
	$(BIN)/task-executor --listen-addr 127.0.0.1:5758 --data-dir ./.data

test:
	$(GO) vet ./...
	cd sdk && $(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	# The SDK is a module of its own (sdk/go.mod), which ./... leaves out.
	cd sdk && $(GO) test -race -count=1 -timeout 20m ./...
	# Each fuzz target briefly, beyond its seeds (which ran above); go test
	# takes one -fuzz target at a time. A failure leaves its input in the
	# package's testdata/fuzz, where it then runs as a seed. Budgets are
	# counts of inputs (a few seconds each here), not durations: Go 1.26's
	# fuzzing coordinator can fail a run with "context deadline exceeded"
	# when a duration runs out mid-input (go.dev/issue/75804).
	$(GO) test -run '^$$' -fuzz '^FuzzCreateBody$$' -fuzztime 20000x ./host/api
	$(GO) test -run '^$$' -fuzz '^FuzzSetTasksBody$$' -fuzztime 20000x ./host/api
	$(GO) test -run '^$$' -fuzz '^FuzzTaskName$$' -fuzztime 20000x ./host/api
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime 1500x ./host/store
	# The shim's C job parser, through the real shim (built with ASan and
	# UBSan where cc has them: glibc's gcc does, musl-gcc does not). Each
	# input starts a process, so fewer inputs (about 15 s here), and
	# minimizing a new input is capped by count too: its default minute
	# would outlast the run.
	cd sdk && $(GO) test -run '^$$' -fuzz '^FuzzShimJob$$' -fuzztime 2000x -fuzzminimizetime 100x ./shim
	# The benchmarks once, tiny, so they never rot (no timing is checked).
	$(GO) run ./cmd/task-executor-bench -quick

# Benchmarks of the real binaries over HTTP and of the hot paths, printed as
# one table against the targets; see docs/benchmarks.md.
bench: build
	$(GO) run ./cmd/task-executor-bench

# Regenerates the gRPC code from sdk/runtimepb/runtime.proto (and the cri
# plugin's client of containerd's event service). Needs protoc
# (Debian: protobuf-compiler) and the Go plugins, installed on demand.
proto:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" protoc --proto_path=sdk/runtimepb \
		--go_out=paths=source_relative:sdk/runtimepb \
		--go-grpc_out=paths=source_relative:sdk/runtimepb sdk/runtimepb/runtime.proto
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" protoc --proto_path=plugins/cri/ctdevents \
		--go_out=paths=source_relative:plugins/cri/ctdevents \
		--go-grpc_out=paths=source_relative:plugins/cri/ctdevents plugins/cri/ctdevents/events.proto

clean:
	rm -rf $(BIN) .data
