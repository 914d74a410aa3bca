package main

import (
	"io"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/service"
)

func TestServicesFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
		want bool
	}{
		{nil, nil, true},
		{[]string{"--services=false"}, nil, false},
		{nil, map[string]string{"WEFTD_SERVICES": "false"}, false},
		{[]string{"--services"}, map[string]string{"WEFTD_SERVICES": "false"}, true},
	} {
		o, err := parseFlags(c.args, env(c.env), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if o.services != c.want {
			t.Errorf("%v %v: services %v, want %v", c.args, c.env, o.services, c.want)
		}
	}
}

// The live subnets go to the proxy once while there is no service, not
// with every peer change; with services they follow every change, and the
// first service gets the subnets of the moment.
func TestServicesLiveOnlyWithServices(t *testing.T) {
	s := newServices(nil, netip.MustParsePrefix("172.16.0.0/12"), nil, nil, nil)
	own := netip.MustParsePrefix("172.16.1.0/24")
	snap := func(peers ...string) {
		s.mu.Lock()
		s.peers = s.peers[:0]
		for _, p := range peers {
			s.peers = append(s.peers, netip.MustParsePrefix(p))
		}
		s.own, s.known = own, true
		s.mu.Unlock()
	}
	var buf []netip.Prefix
	var sent netip.Prefix
	if _, ok := s.live(sent, &buf); ok {
		t.Fatal("live subnets before any snapshot")
	}
	snap("172.16.2.0/24")
	got, ok := s.live(sent, &buf)
	if !ok || got != own || len(buf) != 1 {
		t.Fatalf("first snapshot: %v %v %v; want it sent", got, buf, ok)
	}
	sent = got
	snap("172.16.2.0/24", "172.16.3.0/24")
	if _, ok := s.live(sent, &buf); ok {
		t.Fatal("a peer change without services was sent to the proxy")
	}
	s.update(service.Change{Full: true, Services: map[string]*service.Service{"default/web": {}}})
	if got, ok := s.live(sent, &buf); !ok || got != own || len(buf) != 2 {
		t.Fatalf("first service: %v %v %v; want the subnets of now", got, buf, ok)
	}
	snap("172.16.3.0/24")
	if _, ok := s.live(sent, &buf); !ok || len(buf) != 1 {
		t.Fatalf("a peer change with a service: %v %v; want it sent", buf, ok)
	}
	s.update(service.Change{Services: map[string]*service.Service{"default/web": nil}})
	snap("172.16.4.0/24")
	if _, ok := s.live(sent, &buf); ok {
		t.Fatal("a peer change after the last service went was sent")
	}
}
