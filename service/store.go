package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultNetwork is the service network when none is configured: the
// reference deployment's --service-cluster-ip-range.
var DefaultNetwork = netip.MustParsePrefix("10.254.0.0/16")

// ErrNotFound is returned for a service or endpoints that do not exist.
var ErrNotFound = errors.New("not found")

// maxTxnOps is etcd's default --max-txn-ops: no transaction may hold more
// operations (or more comparisons) than this, unless the server allows more.
// bigTxnOps is what apply tries first.
const (
	maxTxnOps = 128
	bigTxnOps = 2048
)

// Store reads and writes services in etcd under one prefix.
type Store struct {
	cli    *clientv3.Client
	prefix string
	txnOps atomic.Int64 // operations per transaction etcd accepts; 0 until refused
}

// NewStore returns the store for the keys under prefix (weft's
// --etcd-prefix, e.g. /coreos.com/network).
func NewStore(cli *clientv3.Client, prefix string) *Store {
	return &Store{cli: cli, prefix: strings.TrimSuffix(prefix, "/")}
}

// Keys of the schema; see the package comment.
func (s *Store) root() string                { return s.prefix + "/services/" }
func (s *Store) configKey() string           { return s.root() + "config" }
func (s *Store) specKey(ns, n string) string { return s.root() + "specs/" + ns + "/" + n }
func (s *Store) epKey(ns, n string) string   { return s.root() + "endpoints/" + ns + "/" + n }
func (s *Store) ipKey(a netip.Addr) string   { return s.root() + "ips/" + a.String() }

// ParseNetworkConfig parses the JSON at <prefix>/services/config:
// {"Network":"10.254.0.0/16"}.
func ParseNetworkConfig(data []byte) (netip.Prefix, error) {
	var raw struct {
		Network json.RawMessage
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return netip.Prefix{}, fmt.Errorf("service config: not a JSON object: %w", err)
	}
	if !present(raw.Network) {
		return DefaultNetwork, nil
	}
	v, err := str("Network", raw.Network)
	if err == nil {
		return checkNetwork(v)
	}
	return netip.Prefix{}, fmt.Errorf("service config: %w", err)
}

func checkNetwork(v string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(v)
	if err != nil || !p.Addr().Is4() || p != p.Masked() || p.Bits() < 8 || p.Bits() > 28 {
		return netip.Prefix{}, fmt.Errorf("service config: Network %q: must be an IPv4 network address with a length between /8 and /28", v)
	}
	return p, nil
}

// Network returns the service network: the configured one, or DefaultNetwork.
func (s *Store) Network(ctx context.Context) (netip.Prefix, error) {
	resp, err := s.cli.Get(ctx, s.configKey())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("reading %s: %w", s.configKey(), err)
	}
	if len(resp.Kvs) == 0 {
		return DefaultNetwork, nil
	}
	return ParseNetworkConfig(resp.Kvs[0].Value)
}

// SetNetwork changes the service network. It refuses a network that would
// leave an allocated ClusterIP outside it.
func (s *Store) SetNetwork(ctx context.Context, cidr string) (netip.Prefix, error) {
	p, err := checkNetwork(cidr)
	if err != nil {
		return p, err
	}
	taken, rev, err := s.takenIPs(ctx)
	if err != nil {
		return p, err
	}
	for a, who := range taken {
		if !p.Contains(a) {
			return p, fmt.Errorf("service network %s would not hold %s's ClusterIP %s: delete the service first", p, who, a)
		}
	}
	val := fmt.Sprintf(`{"Network":%q}`, p.String())
	// Guard with the ips/ prefix's revision: no allocation may slip in between.
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.root()+"ips/").WithPrefix(), "<", rev+1)).
		Then(clientv3.OpPut(s.configKey(), val)).Commit()
	if err != nil {
		return p, fmt.Errorf("writing %s: %w", s.configKey(), err)
	}
	if !resp.Succeeded {
		return p, errors.New("a ClusterIP was allocated meanwhile: try again")
	}
	return p, nil
}

// takenIPs lists the allocated ClusterIPs and their holders.
func (s *Store) takenIPs(ctx context.Context) (map[netip.Addr]string, int64, error) {
	resp, err := s.cli.Get(ctx, s.root()+"ips/", clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("listing allocated ClusterIPs: %w", err)
	}
	taken := make(map[netip.Addr]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if a, err := netip.ParseAddr(strings.TrimPrefix(string(kv.Key), s.root()+"ips/")); err == nil {
			taken[a] = string(kv.Value)
		}
	}
	return taken, resp.Header.Revision, nil
}

// Get returns one service.
func (s *Store) Get(ctx context.Context, ns, name string) (Service, error) {
	resp, err := s.cli.Get(ctx, s.specKey(ns, name))
	if err != nil {
		return Service{}, fmt.Errorf("reading service %s: %w", Ref(ns, name), err)
	}
	if len(resp.Kvs) == 0 {
		return Service{}, fmt.Errorf("service %s: %w", Ref(ns, name), ErrNotFound)
	}
	return ParseService(resp.Kvs[0].Value, ns)
}

// List returns the services of namespace ns, or of every namespace when ns
// is empty, sorted by namespace and name. Entries that do not parse are
// returned in bad, keyed by their etcd key, with the reason.
func (s *Store) List(ctx context.Context, ns string) (svcs []Service, bad map[string]error, err error) {
	p := s.root() + "specs/"
	if ns != "" {
		p += ns + "/"
	}
	resp, err := s.cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, nil, fmt.Errorf("listing services: %w", err)
	}
	bad = map[string]error{}
	for _, kv := range resp.Kvs {
		sv, err := ParseService(kv.Value, "")
		if err != nil {
			bad[string(kv.Key)] = err
			continue
		}
		svcs = append(svcs, sv)
	}
	return svcs, bad, nil
}

// GetEndpoints returns the endpoints of one service.
func (s *Store) GetEndpoints(ctx context.Context, ns, name string) (Endpoints, error) {
	resp, err := s.cli.Get(ctx, s.epKey(ns, name))
	if err != nil {
		return Endpoints{}, fmt.Errorf("reading endpoints %s: %w", Ref(ns, name), err)
	}
	if len(resp.Kvs) == 0 {
		return Endpoints{}, fmt.Errorf("endpoints %s: %w", Ref(ns, name), ErrNotFound)
	}
	return ParseEndpoints(resp.Kvs[0].Value, ns)
}

// Delete removes a service, its ClusterIP and its endpoints in one
// transaction.
func (s *Store) Delete(ctx context.Context, ns, name string) error {
	svc, err := s.Get(ctx, ns, name)
	if err != nil {
		return err
	}
	ops := []clientv3.Op{clientv3.OpDelete(s.specKey(ns, name)), clientv3.OpDelete(s.epKey(ns, name))}
	cmp := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(s.specKey(ns, name)), ">", 0)}
	if svc.ClusterIP.IsValid() {
		ops = append(ops, clientv3.OpDelete(s.ipKey(svc.ClusterIP)))
		cmp = append(cmp, clientv3.Compare(clientv3.Value(s.ipKey(svc.ClusterIP)), "=", svc.Ref()))
	}
	resp, err := s.cli.Txn(ctx).If(cmp...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("deleting service %s: %w", svc.Ref(), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("service %s changed while being deleted: try again", svc.Ref())
	}
	return nil
}

// Create stores a new service, allocating its ClusterIP, and returns it as
// stored. It fails if the service exists.
func (s *Store) Create(ctx context.Context, svc Service) (Service, error) {
	res, err := s.apply(ctx, []Object{{Service: &svc}}, false)
	if err != nil {
		return Service{}, err
	}
	return res.Services[0], nil
}

// SetEndpoints replaces the endpoints of a service. The service must exist.
func (s *Store) SetEndpoints(ctx context.Context, e Endpoints) error {
	val, err := json.Marshal(e)
	if err != nil {
		return err
	}
	k := s.specKey(e.Namespace, e.Name)
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), ">", 0)).
		Then(clientv3.OpPut(s.epKey(e.Namespace, e.Name), string(val))).Commit()
	if err != nil {
		return fmt.Errorf("writing endpoints %s: %w", e.Ref(), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("service %s: %w", e.Ref(), ErrNotFound)
	}
	return nil
}

// ApplyResult says what Apply did.
type ApplyResult struct {
	Services     []Service // as stored, ClusterIP filled in, in input order
	Created      int       // services that did not exist before
	Endpoints    int       // endpoints objects written
	Transactions int       // etcd transactions committed
}

// Apply creates or replaces every object (a Service keeps the ClusterIP it
// has), in the order given, in as few transactions as etcd's operation limit
// allows. Nothing is written if any object is refused: every check is made
// before the first transaction.
func (s *Store) Apply(ctx context.Context, objs []Object) (ApplyResult, error) {
	return s.apply(ctx, objs, true)
}

func randomIn(r *rand.Rand, p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	size := uint32(1) << (32 - p.Bits())
	// Neither the network nor the broadcast address.
	n += 1 + r.Uint32N(size-2)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}
