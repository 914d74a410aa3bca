# weft's image: weftd (the entrypoint), weftctl and weft-cni, static binaries
# on a slim Debian with iptables and nothing else weftd runs.
#
#   docker build --build-arg VERSION="$(git describe --tags --always --dirty)" -t weft .
#
# Why not distroless: weftd runs the iptables binary, which is not one file.
# It needs glibc, libxtables, libip4tc/libip6tc (legacy), libnftnl and libmnl
# (nft), the extension modules it dlopens from /usr/lib/*/xtables, its
# update-alternatives links and /etc/protocols (netbase) to name "udp".
# Copying that set by hand breaks silently on the next Debian update; the
# package keeps it whole. iproute2 is not here: weftd speaks netlink itself,
# and `kubectl debug` or the host's `ip` serve for looking around.
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
 && apt-get install -y --no-install-recommends iptables \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
      /usr/share/doc /usr/share/man /usr/share/info /usr/share/locale
COPY --from=build /out/weftd /out/weftctl /out/weft-cni /usr/local/bin/
# The CNI plugin's conflist, which the DaemonSet's init container installs.
COPY deploy/cni/10-weft.conflist /etc/weft/cni/
# Root in the container, for the capabilities the DaemonSet grants (NET_ADMIN,
# NET_RAW); the DaemonSet drops every other one and forbids escalation.
USER 0:0
ENTRYPOINT ["/usr/local/bin/weftd"]
