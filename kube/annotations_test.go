package kube

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/weft-net/weft/peer"
)

func testutilValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

func TestParsePeer(t *testing.T) {
	a := newAnnotations(DefaultPrefix)
	n := peer.Network{Prefix: mustPrefix("10.244.0.0/16")}
	for _, tc := range []struct {
		name, cidr string
		ann        map[string]string
		err        string // "" passes; a substring of the error otherwise
	}{
		{"flanneld", "10.244.2.0/24", flannelAnn("192.168.7.2", "0a:00:00:00:00:02"), ""},
		{"no annotations", "10.244.2.0/24", nil, errNotPublished.Error()},
		{"no podCIDR", "", flannelAnn("192.168.7.2", "0a:00:00:00:00:02"), "not assigned"},
		{"podCIDR outside", "10.9.2.0/24", flannelAnn("192.168.7.2", "0a:00:00:00:00:02"), "outside Network"},
		{"zero MAC", "10.244.2.0/24", flannelAnn("192.168.7.2", "00:00:00:00:00:00"), "all zeros"},
		{"multicast MAC", "10.244.2.0/24", flannelAnn("192.168.7.2", "01:00:5e:00:00:01"), "multicast"},
		{"loopback IP", "10.244.2.0/24", flannelAnn("127.0.0.1", "0a:00:00:00:00:02"), "loopback"},
		{"garbage IP", "10.244.2.0/24", flannelAnn("one.two", "0a:00:00:00:00:02"), "not an IP address"},
		{"IP in own subnet", "10.244.2.0/24", flannelAnn("10.244.2.9", "0a:00:00:00:00:02"), "inside the lease's own subnet"},
		{"wrong VNI", "10.244.2.0/24", with(flannelAnn("192.168.7.2", "0a:00:00:00:00:02"), "backend-data", `{"VNI":7,"VtepMAC":"0a:00:00:00:00:02"}`), "VNI 7"},
		{"garbage data", "10.244.2.0/24", with(flannelAnn("192.168.7.2", "0a:00:00:00:00:02"), "backend-data", `[1,2`), "not {"},
		{"host backend", "10.244.2.0/24", with(flannelAnn("192.168.7.2", "0a:00:00:00:00:02"), "backend-type", "host-gw"), "only vxlan"},
		{"managed false", "10.244.2.0/24", with(flannelAnn("192.168.7.2", "0a:00:00:00:00:02"), "kube-subnet-manager", "yes"), `want "true"`},
	} {
		_, err := a.parsePeer(tc.cidr, tc.ann, 1, n)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one saying %q", tc.name, err, tc.err)
		}
	}
}

func with(m map[string]string, k, v string) map[string]string {
	m[DefaultPrefix+"/"+k] = v
	return m
}

func FuzzParsePeer(f *testing.F) {
	f.Add("10.244.2.0/24", `{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}`, "192.168.7.2", "vxlan", "true")
	f.Add("", `{}`, "", "", "")
	a := newAnnotations(DefaultPrefix)
	n := peer.Network{Prefix: mustPrefix("10.244.0.0/16")}
	f.Fuzz(func(t *testing.T, cidr, data, ip, typ, managed string) {
		ann := map[string]string{a.backendData: data, a.publicIP: ip, a.backendType: typ, a.managed: managed}
		p, err := a.parsePeer(cidr, ann, 1, n)
		if err != nil {
			return
		}
		if err := peer.CheckLease(&p, n); err != nil {
			t.Fatalf("accepted %+v that the rulebook refuses: %v", p, err)
		}
	})
}

func TestCheckPrefix(t *testing.T) {
	for _, ok := range []string{DefaultPrefix, "weft.example.com", "a"} {
		if err := CheckPrefix(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Upper.case", "a/b", "-a.b", "a..b"} {
		if CheckPrefix(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
