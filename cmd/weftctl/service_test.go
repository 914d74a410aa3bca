package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/service"
)

func TestEndpointsForNamesPortsByTargetPort(t *testing.T) {
	svc := service.Service{Namespace: "default", Name: "dns", Ports: []service.Port{
		{Name: "dns", Protocol: service.UDP, Port: 53, TargetPort: 5353},
		{Name: "dns-tcp", Protocol: service.TCP, Port: 53, TargetPort: 5353},
		{Name: "metrics", Protocol: service.TCP, Port: 9153, TargetPort: 9153},
	}}
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	e, err := endpointsFor(svc, []netip.AddrPort{ap("172.16.78.9:5353"), ap("172.16.78.10:5353"), ap("172.16.78.9:9153")})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Subsets) != 2 || len(e.Subsets[0].Addresses) != 2 || len(e.Subsets[0].Ports) != 2 || e.Subsets[1].Ports[0].Name != "metrics" {
		t.Fatalf("subsets %+v", e.Subsets)
	}
	for _, p := range svc.Ports {
		if n := len(service.Backends(&svc, p, &e)); (p.Name == "metrics" && n != 1) || (p.Name != "metrics" && n != 2) {
			t.Errorf("port %s: %d backends", p.Name, n)
		}
	}
	if _, err := endpointsFor(svc, []netip.AddrPort{ap("172.16.78.9:80")}); err == nil || !strings.Contains(err.Error(), "targetPort of no port") {
		t.Fatalf("unknown port: %v", err)
	}
}
