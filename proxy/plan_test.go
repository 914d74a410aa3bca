package proxy

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/weft-net/weft/service"
)

func TestPlanLeavesOutEndpointsWithoutLiveLease(t *testing.T) {
	s := &service.Service{Namespace: "default", Name: "web", ClusterIP: netip.MustParseAddr("10.254.247.121"),
		Ports: []service.Port{{Name: "http", Protocol: service.TCP, Port: 8080, TargetPort: 80}, {Name: "dns", Protocol: service.UDP, Port: 53, TargetPort: 53}}}
	e := &service.Endpoints{Namespace: "default", Name: "web", Subsets: []service.Subset{{
		Addresses: []netip.Addr{
			netip.MustParseAddr("172.16.78.10"), // node2's subnet: live
			netip.MustParseAddr("172.16.78.9"),  // live, out of order
			netip.MustParseAddr("172.16.99.9"),  // a subnet with no lease
			netip.MustParseAddr("172.17.42.33"), // a host on the underlay, inside Network
			netip.MustParseAddr("10.1.2.3"),     // outside the overlay
		},
		Ports: []service.EndpointPort{{Name: "http", Protocol: service.TCP, Port: 80}},
	}}}
	lv := newLive(netip.MustParsePrefix("172.16.0.0/12"), []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16")},
		[]netip.Prefix{netip.MustParsePrefix("172.16.78.0/24"), netip.MustParsePrefix("172.16.28.0/24")})
	ports := plan(s, e, lv)
	if len(ports) != 2 {
		t.Fatalf("%d ports, want 2", len(ports))
	}
	var got []string
	for _, b := range ports[0].backends {
		got = append(got, b.String())
	}
	want := []string{"10.1.2.3:80", "172.16.78.9:80", "172.16.78.10:80", "172.17.42.33:80"}
	if !slices.Equal(got, want) {
		t.Fatalf("http backends %v, want %v", got, want)
	}
	if ports[0].key != "svc-default/web/http" || ports[0].proto != 6 || ports[0].port != 8080 {
		t.Fatalf("http port %+v", ports[0])
	}
	// The UDP port has no endpoints of its protocol: refused, not sent to TCP backends.
	if len(ports[1].backends) != 0 || ports[1].proto != 17 {
		t.Fatalf("dns port %+v", ports[1])
	}
	// Without lease information (no overlay), every endpoint is served.
	if n := len(plan(s, e, nil)[0].backends); n != 5 {
		t.Fatalf("%d backends without lease information, want 5", n)
	}
}
