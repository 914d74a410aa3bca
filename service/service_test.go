package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/etcdtest"
)

func TestParseReference(t *testing.T) {
	s, err := ParseService([]byte(ReferenceService), "")
	if err != nil {
		t.Fatal(err)
	}
	want := Service{Namespace: "default", Name: "my-nginx-service", Ports: []Port{{Protocol: TCP, Port: 8080, TargetPort: 80}}}
	if fmt.Sprint(s) != fmt.Sprint(want) {
		t.Fatalf("parsed %+v, want %+v", s, want)
	}
	// Written and read back, it is the same service.
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseService(b, "other")
	if err != nil || fmt.Sprint(back) != fmt.Sprint(s) {
		t.Fatalf("round trip: %s -> %+v, %v", b, back, err)
	}
}

func TestParseErrorsNameTheField(t *testing.T) {
	base := func(spec string) string {
		return `{"kind":"Service","apiVersion":"v1","metadata":{"name":"web"},"spec":` + spec + `}`
	}
	for _, c := range []struct{ in, field string }{
		{`{"kind":"Service","metadata":{}}`, "metadata.name"},
		{`{"kind":"Service","metadata":{"name":"Web_1"},"spec":{}}`, "metadata.name"},
		{`{"kind":"Service","metadata":{"name":"web","namespace":"A"},"spec":{}}`, "metadata.namespace"},
		{`{"kind":"Pod","metadata":{"name":"web"}}`, "kind"},
		{`{"kind":"Service","apiVersion":"v2","metadata":{"name":"web"}}`, "apiVersion"},
		{base(`{"ports":[]}`), "spec.ports"},
		{base(`{"ports":[{"port":0}]}`), "spec.ports[0].port"},
		{base(`{"ports":[{"port":"80"}]}`), "spec.ports[0].port"},
		{base(`{"ports":[{"port":80,"protocol":"SCTP"}]}`), "spec.ports[0].protocol"},
		{base(`{"ports":[{"port":80,"targetPort":"http"}]}`), "spec.ports[0].targetPort"},
		{base(`{"ports":[{"port":80,"targetPort":70000}]}`), "spec.ports[0].targetPort"},
		{base(`{"ports":[{"name":"a","port":80},{"port":81}]}`), "spec.ports[1].name"},
		{base(`{"ports":[{"name":"a","port":80},{"name":"b","port":80}]}`), "spec.ports[1].port"},
		{base(`{"clusterIP":"10.254.1.300","ports":[{"port":80}]}`), "spec.clusterIP"},
		{base(`{"clusterIP":"None","ports":[{"port":80}]}`), "spec.clusterIP"},
		{base(`{"sessionAffinity":"Cookie","ports":[{"port":80}]}`), "spec.sessionAffinity"},
		{base(`{"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":0}},"ports":[{"port":80}]}`), "spec.sessionAffinityConfig.clientIP.timeoutSeconds"},
	} {
		_, err := ParseService([]byte(c.in), "")
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%s: got %v, want an error naming %s", c.in, err, c.field)
		}
	}
	_, err := ParseEndpoints([]byte(`{"kind":"Endpoints","metadata":{"name":"web"},"subsets":[{"addresses":[{"ip":"172.16.78.9"},{"ip":"fe80::1"}],"ports":[{"port":80}]}]}`), "")
	if err == nil || !strings.Contains(err.Error(), "subsets[0].addresses[1].ip") {
		t.Errorf("IPv6 endpoint: got %v, want an error naming subsets[0].addresses[1].ip", err)
	}
}

func TestParseAffinityAndUnknownFields(t *testing.T) {
	s, err := ParseService([]byte(`{"kind":"Service","metadata":{"name":"dns","namespace":"kube-system","labels":{"a":"b"}},
		"spec":{"type":"ClusterIP","sessionAffinity":"ClientIP","ports":[{"name":"dns","protocol":"UDP","port":53},{"name":"dns-tcp","port":53}]},"status":{}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if s.Namespace != "kube-system" || s.AffinityTimeout != DefaultAffinityTimeout || len(s.Ports) != 2 || s.Ports[0].Protocol != UDP || s.Ports[1].TargetPort != 53 {
		t.Fatalf("parsed %+v", s)
	}
}

func FuzzParseObjects(f *testing.F) {
	f.Add([]byte(ReferenceService))
	f.Add([]byte(`{"kind":"List","items":[{"kind":"Endpoints","metadata":{"name":"a"},"subsets":[{"addresses":[{"ip":"1.2.3.4"}],"ports":[{"port":1}]}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, err := ParseObjects(b, "")
		if err != nil {
			return
		}
		for _, o := range objs {
			var out []byte
			if o.Service != nil {
				out, _ = json.Marshal(o.Service)
				back, err := ParseService(out, "")
				if err != nil || fmt.Sprint(back) != fmt.Sprint(*o.Service) {
					t.Fatalf("service %s does not read back: %v", out, err)
				}
			} else {
				out, _ = json.Marshal(o.Endpoints)
				if _, err := ParseEndpoints(out, ""); err != nil {
					t.Fatalf("endpoints %s do not read back: %v", out, err)
				}
			}
		}
	})
}

func newStore(t *testing.T) *Store {
	e := etcdtest.Start(t, etcdtest.Options{})
	return NewStore(e.Client(t), "/coreos.com/network")
}

func TestCreateAllocatesAndRefuses(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	s, _ := ParseService([]byte(ReferenceService), "")
	got, err := st.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if !DefaultNetwork.Contains(got.ClusterIP) || got.ClusterIP == DefaultNetwork.Addr() {
		t.Fatalf("ClusterIP %v not a host address of %v", got.ClusterIP, DefaultNetwork)
	}
	if _, err := st.Create(ctx, s); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second create: %v", err)
	}
	// A requested address that is taken is refused, naming the field and the holder.
	other := Service{Namespace: "default", Name: "other", ClusterIP: got.ClusterIP, Ports: []Port{{Protocol: TCP, Port: 80, TargetPort: 80}}}
	_, err = st.Create(ctx, other)
	if err == nil || !strings.Contains(err.Error(), "spec.clusterIP") || !strings.Contains(err.Error(), "default/my-nginx-service") {
		t.Fatalf("taken clusterIP: %v", err)
	}
	other.ClusterIP = netip.MustParseAddr("10.99.0.1")
	if _, err := st.Create(ctx, other); err == nil || !strings.Contains(err.Error(), "not in the service network") {
		t.Fatalf("clusterIP outside the network: %v", err)
	}
	other.ClusterIP = netip.MustParseAddr("10.254.247.121")
	if got.ClusterIP != other.ClusterIP {
		if o, err := st.Create(ctx, other); err != nil || o.ClusterIP != other.ClusterIP {
			t.Fatalf("free requested clusterIP: %v %v", o, err)
		}
	}
	// Delete frees the address and removes every key.
	if err := st.Delete(ctx, "default", "my-nginx-service"); err != nil {
		t.Fatal(err)
	}
	resp, _ := st.cli.Get(ctx, st.ipKey(got.ClusterIP))
	if len(resp.Kvs) != 0 {
		t.Fatalf("ClusterIP key left after delete")
	}
	if err := st.Delete(ctx, "default", "my-nginx-service"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleting again: %v", err)
	}
}

// Many clients create services at once in a network with few addresses:
// no two get the same ClusterIP, and the ones that do not fit are refused.
func TestConcurrentAllocationNeverShares(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	if _, err := st.SetNetwork(ctx, "10.254.0.0/28"); err != nil { // 14 addresses
		t.Fatal(err)
	}
	var mu sync.Mutex
	ips := map[netip.Addr]string{}
	var wg sync.WaitGroup
	fails := 0
	for i := range 20 {
		wg.Go(func() {
			s := Service{Namespace: "default", Name: fmt.Sprintf("s%d", i), Ports: []Port{{Protocol: TCP, Port: 80, TargetPort: 80}}}
			got, err := st.Create(ctx, s)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fails++
				return
			}
			if prev, dup := ips[got.ClusterIP]; dup {
				t.Errorf("%s and %s share %s", prev, got.Ref(), got.ClusterIP)
			}
			ips[got.ClusterIP] = got.Ref()
		})
	}
	wg.Wait()
	if len(ips) != 14 || fails != 6 {
		t.Fatalf("%d services got addresses and %d failed, want 14 and 6", len(ips), fails)
	}
}

func TestApplyListOfThousands(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	var items []string
	for i := range 1000 {
		items = append(items, fmt.Sprintf(`{"kind":"Service","apiVersion":"v1","metadata":{"name":"s%d"},"spec":{"ports":[{"port":80,"targetPort":8080}]}}`, i),
			fmt.Sprintf(`{"kind":"Endpoints","apiVersion":"v1","metadata":{"name":"s%d"},"subsets":[{"addresses":[{"ip":"172.16.78.9"},{"ip":"172.16.78.10"}],"ports":[{"port":8080}]}]}`, i))
	}
	list := `{"kind":"List","apiVersion":"v1","items":[` + strings.Join(items, ",") + `]}`
	objs, err := ParseObjects([]byte(list), "")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := st.Apply(ctx, objs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("applied %d services and %d endpoints in %d transactions, %v", len(res.Services), res.Endpoints, res.Transactions, time.Since(start))
	if res.Created != 1000 || res.Endpoints != 1000 || res.Transactions > 30 {
		t.Fatalf("result %+v", res)
	}
	svcs, bad, err := st.List(ctx, "")
	if err != nil || len(svcs) != 1000 || len(bad) != 0 {
		t.Fatalf("listed %d services, %d bad, %v", len(svcs), len(bad), err)
	}
	seen := map[netip.Addr]bool{}
	for _, s := range svcs {
		if seen[s.ClusterIP] {
			t.Fatalf("ClusterIP %s given twice", s.ClusterIP)
		}
		seen[s.ClusterIP] = true
	}
	// Applied again, every service keeps its address.
	res2, err := st.Apply(ctx, objs)
	if err != nil || res2.Created != 0 {
		t.Fatalf("re-apply: %+v %v", res2, err)
	}
	for i, s := range res2.Services {
		if s.ClusterIP != res.Services[i].ClusterIP {
			t.Fatalf("%s moved from %s to %s", s.Ref(), res.Services[i].ClusterIP, s.ClusterIP)
		}
	}
	// A List with one bad item writes nothing and names the item and field.
	bad1 := strings.Replace(list, `"name":"s999"},"spec":{"ports":[{"port":80`, `"name":"s999"},"spec":{"ports":[{"port":0`, 1)
	if _, err := ParseObjects([]byte(bad1), ""); err == nil || !strings.Contains(err.Error(), "items[1998]") || !strings.Contains(err.Error(), "spec.ports[0].port") {
		t.Fatalf("bad item: %v", err)
	}
}

func TestWatchSeesChanges(t *testing.T) {
	st := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := make(chan Change, 100)
	go st.Watch(ctx, slog.New(slog.DiscardHandler), func(c Change) { changes <- c })
	first := <-changes
	if !first.Full || len(first.Services) != 0 || first.Network != DefaultNetwork {
		t.Fatalf("first change %+v", first)
	}
	s, _ := ParseService([]byte(ReferenceService), "")
	s, err := st.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetEndpoints(ctx, Endpoints{Namespace: "default", Name: s.Name, Subsets: []Subset{{
		Addresses: []netip.Addr{netip.MustParseAddr("172.16.78.9")}, Ports: []EndpointPort{{Protocol: TCP, Port: 80}}}}}); err != nil {
		t.Fatal(err)
	}
	// Garbage written by hand is ignored, not read as a deletion.
	if _, err := st.cli.Put(ctx, st.specKey("default", s.Name), "{garbage"); err != nil {
		t.Fatal(err)
	}
	var merged Change
	deadline := time.After(5 * time.Second)
	for merged.Endpoints["default/my-nginx-service"] == nil {
		select {
		case c := <-changes:
			if merged.Services == nil {
				merged = c
			} else {
				merged.Merge(c)
			}
		case <-deadline:
			t.Fatalf("endpoints not seen: %+v", merged)
		}
	}
	if got := merged.Services["default/my-nginx-service"]; got == nil || got.ClusterIP != s.ClusterIP {
		t.Fatalf("service not seen or garbage read as deletion: %+v", got)
	}
	if err := st.SetEndpoints(ctx, Endpoints{Namespace: "default", Name: "nosuch"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("endpoints of a missing service: %v", err)
	}
}

// An etcd that allows large transactions gets few of them.
func TestApplyUsesLargeTransactionsWhenAllowed(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{ExtraArgs: []string{"--max-txn-ops", "5000"}})
	st := NewStore(e.Client(t), "/coreos.com/network")
	var objs []Object
	for i := range 1000 {
		objs = append(objs, Object{Service: &Service{Namespace: "default", Name: fmt.Sprintf("s%d", i), Ports: []Port{{Protocol: TCP, Port: 80, TargetPort: 80}}}},
			Object{Endpoints: &Endpoints{Namespace: "default", Name: fmt.Sprintf("s%d", i)}})
	}
	res, err := st.Apply(context.Background(), objs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Created != 1000 || res.Transactions > 3 {
		t.Fatalf("%+v: want 1,000 services in at most 3 transactions", res)
	}
}

func FuzzParseNetworkConfig(f *testing.F) {
	f.Add([]byte(`{"Network":"10.254.0.0/16"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseNetworkConfig(b)
		if err != nil {
			return
		}
		if !p.Addr().Is4() || p != p.Masked() || p.Bits() < 8 || p.Bits() > 28 {
			t.Fatalf("%q accepted as %v", b, p)
		}
	})
}
