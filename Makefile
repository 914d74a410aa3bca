# weft's build. `make demo` and `make test` need root (namespaces, VXLAN,
# iptables); both install the Debian packages they need first.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# grpcnotrace drops gRPC's golang.org/x/net/trace, which brings in
# html/template; once a template package is linked in, the linker keeps every
# exported method of every reachable type, 4 MB more binary mapped into
# every weftd (see README, memory).
TAGS    := grpcnotrace
BIN     := $(CURDIR)/bin

# Debian packages the demo and the tests use: ip and bridge, iptables, the etcd
# server the end-to-end suite runs, ping and ncat for traffic, prometheus and
# promtool for the scrape test; nft to look at the ingress filter, etcdctl for
# the role script; the CNI plugins weft-cni delegates to, and podman with runc
# and a static busybox for the container image of its test.
DEB_PACKAGES := iproute2 iptables nftables etcd-server etcd-client iputils-ping ncat prometheus procps ca-certificates \
	containernetworking-plugins podman runc busybox-static ethtool

# Packages whose tests never need root; they also run under the race detector.
UNIT_PKGS := ./ip/... ./peer/... ./subnet/... ./service/... ./kube/... ./cmd/... ./internal/etcdconn/...

# The Kubernetes-mode tests and benchmark run real kube-apiserver, kube-proxy
# and etcd 3.6+, built from the Go module proxy by e2e/kube/tools/build.sh
# (a module of its own) into a cache outside the repository, keyed by
# version: only the first run on a machine pays (minutes on 2 cores).
KUBE_CACHE ?= /var/cache/weft-kube

.PHONY: all build deps demo test test-unit test-kernel e2e bench fuzz vet clean kube-tools

all: build

build:
	CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/weftd ./cmd/weftd
	CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/weftctl ./cmd/weftctl
	CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/weft-cni ./cmd/weft-cni

# deps installs whatever of DEB_PACKAGES is missing (root, Debian).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: deps build
	$(BIN)/weftctl demo $(DEMO_FLAGS)

# test runs everything: unit tests (race detector), kernel tests in namespaces,
# and the end-to-end suite on a namespace cluster with a real etcd.
test: deps build vet kube-tools
	WEFT_REQUIRE_ETCD=1 $(GO) test -race -count=1 $(UNIT_PKGS)
	WEFT_REQUIRE_ETCD=1 $(GO) test -count=1 -p 1 ./rtnl/... ./backend/... ./network/... ./proxy/... ./internal/cluster/...
	WEFT_BIN=$(BIN) $(GO) test -count=1 -p 1 ./cni/...
	WEFT_REQUIRE_ETCD=1 WEFT_BIN=$(BIN) WEFT_KUBE_BIN=$$(bash e2e/kube/tools/build.sh $(KUBE_CACHE)) \
		$(GO) test -count=1 -p 1 -timeout 30m ./e2e/...

# kube-tools builds what is missing of the Kubernetes test binaries.
kube-tools:
	@start=$$(date +%s); bash e2e/kube/tools/build.sh $(KUBE_CACHE) >/dev/null; \
	echo "Kubernetes test binaries ready in $$(( $$(date +%s) - start ))s"

test-unit:
	$(GO) test -race -count=1 $(UNIT_PKGS)

# staticcheck is fetched through the module proxy at the version pinned here.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

vet:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

bench: deps build kube-tools
	WEFT_BIN=$(BIN) WEFT_KUBE_BIN=$$(bash e2e/kube/tools/build.sh $(KUBE_CACHE)) $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./bench/...
	$(GO) test -count=1 -run '^$$' -bench 'IngressOneChange|SetAddOne' -benchtime 3000x ./network/ ./backend/vxlan/

# fuzz runs every fuzz target in the repo, FUZZTIME each (make fuzz FUZZTIME=5m).
# Their seed corpora live in each package's testdata/fuzz and also run in test.
fuzz: FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzPick$$' -fuzztime $(FUZZTIME) ./ip/
	$(GO) test -run '^$$' -fuzz '^FuzzCheck$$' -fuzztime $(FUZZTIME) ./peer/
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(FUZZTIME) ./subnet/
	$(GO) test -run '^$$' -fuzz '^FuzzParseKey$$' -fuzztime $(FUZZTIME) ./subnet/
	$(GO) test -run '^$$' -fuzz '^FuzzParseLeaseAttrs$$' -fuzztime $(FUZZTIME) ./subnet/
	$(GO) test -run '^$$' -fuzz '^FuzzPeerSnapshot$$' -fuzztime $(FUZZTIME) ./subnet/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./rtnl/
	$(GO) test -run '^$$' -fuzz '^FuzzDisagrees$$' -fuzztime $(FUZZTIME) ./backend/vxlan/
	$(GO) test -run '^$$' -fuzz '^FuzzSet$$' -fuzztime $(FUZZTIME) ./backend/vxlan/
	$(GO) test -run '^$$' -fuzz '^FuzzReadSubnetEnv$$' -fuzztime $(FUZZTIME) ./network/
	$(GO) test -run '^$$' -fuzz '^FuzzKernelVersion$$' -fuzztime $(FUZZTIME) ./network/
	$(GO) test -run '^$$' -fuzz '^FuzzParseFlags$$' -fuzztime $(FUZZTIME) ./cmd/weftd/
	$(GO) test -run '^$$' -fuzz '^FuzzParsePeer$$' -fuzztime $(FUZZTIME) ./kube/
	$(GO) test -run '^$$' -fuzz '^FuzzNodeUnmarshal$$' -fuzztime $(FUZZTIME) ./kube/
	$(GO) test -run '^$$' -fuzz '^FuzzParsePing$$' -fuzztime $(FUZZTIME) ./internal/cluster/
	$(GO) test -run '^$$' -fuzz '^FuzzSubnetEnv$$' -fuzztime $(FUZZTIME) ./cni/
	$(GO) test -run '^$$' -fuzz '^FuzzConf$$' -fuzztime $(FUZZTIME) ./cni/
	$(GO) test -run '^$$' -fuzz '^FuzzParseObjects$$' -fuzztime $(FUZZTIME) ./service/
	$(GO) test -run '^$$' -fuzz '^FuzzParseNetworkConfig$$' -fuzztime $(FUZZTIME) ./service/

clean:
	rm -rf $(BIN)
