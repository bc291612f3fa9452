# task-executor's image: the host at /usr/local/bin/task-executor, the shim
# beside it and the built-in runtime plugins in /usr/local/bin/plugins/,
# where the host looks by default (plugins/ beside its binary) and where
# the plugins find the shim (one directory up). Every binary is static.
#
#   docker build -t task-executor .
#
# examples/k8s holds pods that run it. A test in examples/k8s checks this
# file against the repository and the host's defaults.

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
COPY examples/ examples/
# Static Go binaries: the image needs no C library of a given version.
ENV CGO_ENABLED=0
# `make build` is the one description of the layout: bin/task-executor,
# bin/task-executor-shim, bin/plugins/* (made non-writable by others, or
# the host refuses them) and the example plugins in bin/examples/.
RUN make build

# The image: a small Debian, because process tasks run here (without
# sidecar mode) and expect a shell and the usual tools. Sidecar and
# container mode run tasks elsewhere and would do with an empty base.
FROM debian:bookworm-slim
COPY --from=build /src/bin/task-executor /src/bin/task-executor-shim /usr/local/bin/
COPY --from=build /src/bin/plugins/ /usr/local/bin/plugins/
EXPOSE 5758
ENTRYPOINT ["/usr/local/bin/task-executor"]
