# weft's image: weftd (the entrypoint), weftctl and weft-cni, static binaries on a slim
# Debian with the iptables weftd runs and iproute2 for looking around.
#
#   docker build --build-arg VERSION="$(git describe --tags --always --dirty)" -t weft .
#
# The image's iptables uses the nf_tables backend. On a host whose other
# agents (kube-proxy, Docker) use iptables-legacy, make the image use legacy
# too (update-alternatives --set iptables /usr/sbin/iptables-legacy), or
# rules end up in two places.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The same build as `make build`.
RUN CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/weftd ./cmd/weftd
RUN CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/weftctl ./cmd/weftctl
RUN CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/weft-cni ./cmd/weft-cni

FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/weftd /out/weftctl /out/weft-cni /usr/local/bin/
# The CNI plugin's conflist, which the DaemonSet's init container installs.
COPY deploy/cni/10-weft.conflist /etc/weft/cni/
ENTRYPOINT ["/usr/local/bin/weftd"]
