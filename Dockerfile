# task-executor's image: one static executable at /usr/local/bin/
# task-executor, which is the host, its built-in runtime plugins (it starts
# itself again as each) and the shim. Upstream's install recipe copies the
# executor out of /workspace/server, which is the same file.
#
#   docker build -t task-executor .
#
# examples/k8s holds pods that run it. A test in examples/k8s checks this
# file against the repository and the Makefile.

# The builder: Go, and a C compiler with musl for the static shim (see the
# Makefile; the golang image brings gcc and make).
FROM golang:1.26-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The modules first, so that a change to the sources does not download
# them again.
COPY go.mod go.sum ./
RUN go mod download
COPY Makefile ./
COPY cmd/ cmd/
COPY host/ host/
COPY sdk/ sdk/
COPY plugins/ plugins/
COPY internal/ internal/
COPY examples/ examples/
# Static Go binaries: the image needs no C library of a given version.
ENV CGO_ENABLED=0
# `make build` is the one description of the executable: bin/task-executor,
# with the shim compiled and embedded (and the example plugins in
# bin/examples/, not installed).
RUN make build

# The image: a small Debian, because process tasks run here (without
# sidecar mode) and expect a shell and the usual tools. Sidecar and
# container mode run tasks elsewhere and would do with an empty base.
FROM debian:bookworm-slim
COPY --from=build /src/bin/task-executor /usr/local/bin/
RUN mkdir -p /workspace && ln -s /usr/local/bin/task-executor /workspace/server
EXPOSE 5758
ENTRYPOINT ["/usr/local/bin/task-executor"]
