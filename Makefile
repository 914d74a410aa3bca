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
# promtool for the scrape test.
DEB_PACKAGES := iproute2 iptables etcd-server iputils-ping ncat prometheus procps ca-certificates

# Packages whose tests never need root; they also run under the race detector.
UNIT_PKGS := ./ip/... ./subnet/... ./service/... ./cmd/... ./internal/etcdconn/...

.PHONY: all build deps demo test test-unit test-kernel e2e bench fuzz vet clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/weftd ./cmd/weftd
	CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/weftctl ./cmd/weftctl

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
test: deps build vet
	WEFT_REQUIRE_ETCD=1 $(GO) test -race -count=1 $(UNIT_PKGS)
	WEFT_REQUIRE_ETCD=1 $(GO) test -count=1 -p 1 ./backend/... ./network/... ./proxy/... ./internal/cluster/...
	WEFT_REQUIRE_ETCD=1 WEFT_BIN=$(BIN) $(GO) test -count=1 -p 1 -timeout 20m ./e2e/...

test-unit:
	$(GO) test -race -count=1 $(UNIT_PKGS)

# staticcheck is fetched through the module proxy at the version pinned here.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

vet:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

bench: deps build
	WEFT_BIN=$(BIN) $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./bench/...

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseConfig -fuzztime 30s ./subnet/
	$(GO) test -run '^$$' -fuzz FuzzParseKey -fuzztime 30s ./subnet/
	$(GO) test -run '^$$' -fuzz FuzzParseLeaseAttrs -fuzztime 30s ./subnet/
	$(GO) test -run '^$$' -fuzz FuzzReadSubnetEnv -fuzztime 30s ./network/
	$(GO) test -run '^$$' -fuzz FuzzParseObjects -fuzztime 30s ./service/
	$(GO) test -run '^$$' -fuzz FuzzParseNetworkConfig -fuzztime 30s ./service/

clean:
	rm -rf $(BIN)
