package cni

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// subnetEnv is what the plugin needs from subnet.env.
type subnetEnv struct {
	network netip.Prefix // FLANNEL_NETWORK, the whole overlay
	subnet  netip.Prefix // FLANNEL_SUBNET, the bridge's address with the lease's length
	mtu     int          // FLANNEL_MTU
	ipMasq  bool         // FLANNEL_IPMASQ: weftd masquerades traffic leaving the overlay
}

// lease is the node's subnet: FLANNEL_SUBNET with the host bits cleared.
func (e subnetEnv) lease() netip.Prefix { return e.subnet.Masked() }

// gateway is the bridge's address as host-local hands it out: the lease's
// first address, which is also what weftd writes into FLANNEL_SUBNET.
func (e subnetEnv) gateway() netip.Addr { return e.lease().Addr().Next() }

// errNoSubnetEnv marks a subnet.env that does not exist (yet): weftd has not
// written it, so the node cannot take containers for now.
var errNoSubnetEnv = errors.New("subnet file is missing")

// readSubnetEnv reads path. A missing file gives an error matching
// errNoSubnetEnv; every error names the file and what is wrong with it.
func readSubnetEnv(path string) (subnetEnv, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return subnetEnv{}, fmt.Errorf("%w: %s does not exist (is weftd running on this node?)", errNoSubnetEnv, path)
	}
	if err != nil {
		return subnetEnv{}, fmt.Errorf("reading subnet file: %w", err)
	}
	env, err := parseSubnetEnv(b)
	if err != nil {
		return subnetEnv{}, fmt.Errorf("subnet file %s: %w", path, err)
	}
	return env, nil
}

const (
	keyNetwork = "FLANNEL_NETWORK"
	keySubnet  = "FLANNEL_SUBNET"
	keyMTU     = "FLANNEL_MTU"
	keyIPMasq  = "FLANNEL_IPMASQ"
)

// parseSubnetEnv accepts what weftd and flanneld write: KEY=VALUE lines,
// blank lines, # comments and keys it does not know (flannel's IPv6 ones),
// with each of the four keys above exactly once.
func parseSubnetEnv(b []byte) (subnetEnv, error) {
	var env subnetEnv
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 64*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return subnetEnv{}, fmt.Errorf("line %d: %q is not KEY=VALUE", n, line)
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch key {
		case keyNetwork, keySubnet, keyMTU, keyIPMasq:
		default:
			continue
		}
		if prev, dup := seen[key]; dup {
			return subnetEnv{}, fmt.Errorf("line %d: %s set again (first on line %d)", n, key, prev)
		}
		seen[key] = n
		if err := env.set(key, val); err != nil {
			return subnetEnv{}, fmt.Errorf("line %d: %s %q: %w", n, key, val, err)
		}
	}
	if err := sc.Err(); err != nil {
		return subnetEnv{}, err
	}
	var missing []string
	for _, k := range []string{keyNetwork, keySubnet, keyMTU, keyIPMasq} {
		if _, ok := seen[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return subnetEnv{}, fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	return env, nil
}

func (e *subnetEnv) set(key, val string) error {
	switch key {
	case keyNetwork, keySubnet:
		p, err := netip.ParsePrefix(val)
		if err != nil {
			return errors.New("not an address/length")
		}
		if key == keyNetwork {
			e.network = p
		} else {
			e.subnet = p
		}
	case keyMTU:
		mtu, err := strconv.Atoi(val)
		if err != nil {
			return errors.New("not a number")
		}
		if mtu < 68 || mtu > 65535 {
			return errors.New("outside 68..65535")
		}
		e.mtu = mtu
	case keyIPMasq:
		v, err := strconv.ParseBool(val)
		if err != nil {
			return errors.New("not true or false")
		}
		e.ipMasq = v
	}
	return nil
}
