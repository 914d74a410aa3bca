package subnet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// flannel's dual-stack and IPv6-only keys.
func TestParseDualKey(t *testing.T) {
	for in, want := range map[string][2]string{
		"172.16.28.0-24&fd42:0:0:1c::-64": {"172.16.28.0/24", "fd42:0:0:1c::/64"},
		"0.0.0.0-0&fd42:0:0:1c::-64":      {"fd42:0:0:1c::/64", ""},
		"172.16.28.0-24":                  {"172.16.28.0/24", ""},
	} {
		p, p6, err := ParseDualKey(in)
		if err != nil || p.String() != want[0] || (want[1] == "") == p6.IsValid() || (want[1] != "" && p6.String() != want[1]) {
			t.Errorf("ParseDualKey(%q) = %v, %v, %v; want %v", in, p, p6, err, want)
		}
		if got := DualKeyName(p, p6); got != in {
			t.Errorf("DualKeyName(%v, %v) = %q, want %q", p, p6, got, in)
		}
	}
}

// A dual-stack lease is written as flannel writes it and read back; an
// IPv6-only one likewise; flannel's dual-stack value is read.
func TestLeaseAttrsDualStack(t *testing.T) {
	mac, _ := net.ParseMAC("b2:69:2c:67:63:b8")
	mac6, _ := net.ParseMAC("b2:69:2c:67:63:b9")
	dual := LeaseAttrs{PublicIP: netip.MustParseAddr("172.17.42.31"), BackendType: "vxlan", VNI: 1, VtepMAC: mac,
		PublicIP6: netip.MustParseAddr("fd00:17::31"), VtepMAC6: mac6}
	b, err := json.Marshal(dual)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"PublicIP":"172.17.42.31","PublicIPv6":"fd00:17::31","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"},"BackendV6Data":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b9"}}`
	if string(b) != want {
		t.Fatalf("marshal = %s\nwant      %s", b, want)
	}
	if got, err := ParseLeaseAttrs(b); err != nil || !sameAttrs(got, dual) {
		t.Errorf("read back %+v, %v", got, err)
	}
	v6 := LeaseAttrs{PublicIP: netip.MustParseAddr("fd00:17::31"), BackendType: "vxlan", VNI: 1, VtepMAC: mac6}
	b, _ = json.Marshal(v6)
	want = `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:17::31","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b9"}}`
	if string(b) != want {
		t.Fatalf("IPv6-only marshal = %s\nwant      %s", b, want)
	}
	if got, err := ParseLeaseAttrs(b); err != nil || !sameAttrs(got, v6) {
		t.Errorf("IPv6-only read back %+v, %v", got, err)
	}
	// Both readers take flannel's form (the fast one included).
	if _, ok := scanLeaseValue(b); !ok {
		t.Errorf("the fast reader refused %s", b)
	}
	for _, bad := range []struct{ in, want string }{
		{`{"PublicIP":"172.17.42.31","PublicIPv6":"172.17.42.31","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"},"BackendV6Data":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b9"}}`, "PublicIPv6"},
		{`{"PublicIP":"172.17.42.31","PublicIPv6":"fd00:17::31","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"}}`, "BackendV6Data missing"},
		{`{"PublicIP":"172.17.42.31","PublicIPv6":"fd00:17::31","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"},"BackendV6Data":{"VNI":1,"VtepMAC":"x"}}`, "BackendV6Data.VtepMAC"},
		{`{"PublicIP":"172.17.42.31","PublicIPv6":"fd00:17::31","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"},"BackendV6Data":{"VNI":2,"VtepMAC":"b2:69:2c:67:63:b9"}}`, "BackendV6Data.VNI"},
	} {
		if _, err := ParseLeaseAttrs([]byte(bad.in)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseLeaseAttrs(%s) = %v, want an error naming %s", bad.in, err, bad.want)
		}
	}
}

// A key and a value of different shapes are refused (or, for a v4 key with
// a dual value, read as v4).
func TestLeaseShape(t *testing.T) {
	const dual = `{"PublicIP":"172.17.42.31","PublicIPv6":"fd00:17::31","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"},"BackendV6Data":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b9"}}`
	const v4 = `{"PublicIP":"172.17.42.31","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"}}`
	const pfx = "/coreos.com/network/subnets/"
	l := parseKV(pfx, []byte(pfx+"172.16.28.0-24&fd42:0:0:1c::-64"), []byte(v4), 1, 1, 1)
	if l.Err == nil || !strings.Contains(l.Err.Error(), "PublicIPv6 missing") {
		t.Errorf("dual key, v4 value: %v", l.Err)
	}
	l = parseKV(pfx, []byte(pfx+"172.16.28.0-24"), []byte(dual), 1, 1, 1)
	if l.Err != nil || l.Attrs.PublicIP6.IsValid() || l.Subnet6.IsValid() {
		t.Errorf("v4 key, dual value: %+v", l)
	}
	l = parseKV(pfx, []byte(pfx+"172.16.28.0-24&fd42:0:0:1c::-64"), []byte(dual), 1, 1, 1)
	if l.Err != nil || l.Subnet6.String() != "fd42:0:0:1c::/64" || l.Attrs.PublicIP6.String() != "fd00:17::31" {
		t.Errorf("dual key, dual value: %+v", l)
	}
	l = parseKV(pfx, []byte(pfx+"0.0.0.0-0&fd42:0:0:1c::-64"), []byte(v4), 1, 1, 1)
	if l.Err == nil {
		t.Errorf("IPv6-only key, v4 value: accepted")
	}
}

func TestParseKey(t *testing.T) {
	good := map[string]string{"172.16.28.0-24": "172.16.28.0/24", "0.0.0.0-0": "0.0.0.0/0", "10.0.0.4-30": "10.0.0.4/30"}
	for in, want := range good {
		p, err := ParseKey(in)
		if err != nil || p != netip.MustParsePrefix(want) {
			t.Errorf("ParseKey(%q) = %v, %v", in, p, err)
		}
		if KeyName(p) != in {
			t.Errorf("KeyName(%v) = %q", p, KeyName(p))
		}
	}
	for _, in := range []string{"", "-", "172.16.28.0", "172.16.28.0/24", "172.16.28.1-24", "172.16.28.0-33",
		"172.16.28.0-024", "172.16.28.0-+24", "172.16.028.0-24", "fd00::-64", "172.16.28.0-24&fd00::1-64",
		"172.16.28.0-24&fd00:0::-64", "172.16.28.0-24&172.16.29.0-24", "172.16.28.0-24&fd00::-64&fd01::-64",
		"0.0.0.0-0&fd00::-0", "1.0.0.0-0&fd00::-64", "172.16.28.0-24&::ffff:1.2.3.0-120", "172.16.28.0-24&fd00::-129",
		"172.16.28.0-24 ", " 172.16.28.0-24", "172.16.28.0--24", "172.16.28.0-99999999999999999999"} {
		if p, err := ParseKey(in); err == nil {
			t.Errorf("ParseKey(%q) = %v, want error", in, p)
		}
	}
}

// flannelLease mirrors the JSON shape of flannel's pkg/lease LeaseAttrs and
// its vxlan backend's lease attributes (VNI is a uint16 there).
type flannelLease struct {
	PublicIP    string
	PublicIPv6  *string
	BackendType string          `json:",omitempty"`
	BackendData json.RawMessage `json:",omitempty"`
}
type flannelVXLAN struct {
	VNI     uint16
	VtepMAC string
}

func TestLeaseAttrsFlannelCompatible(t *testing.T) {
	mac, _ := net.ParseMAC("b2:69:2c:67:63:b8")
	ours := LeaseAttrs{PublicIP: netip.MustParseAddr("172.17.42.31"), BackendType: "vxlan", VNI: 1, VtepMAC: mac}
	b, err := json.Marshal(ours)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"PublicIP":"172.17.42.31","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"}}`
	if string(b) != want {
		t.Fatalf("marshal = %s\nwant      %s", b, want)
	}
	// flanneld reads ours.
	var fl flannelLease
	var fv flannelVXLAN
	if err := json.Unmarshal(b, &fl); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(fl.BackendData, &fv); err != nil {
		t.Fatal(err)
	}
	if fl.PublicIP != "172.17.42.31" || fl.BackendType != "vxlan" || fv.VNI != 1 || fv.VtepMAC != "b2:69:2c:67:63:b8" {
		t.Fatalf("flannel decoded %+v %+v", fl, fv)
	}
	// We read what flanneld v0.2x writes.
	flanneld := `{"PublicIP":"172.17.42.32","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6a:1f:3e:00:11:22"},"BackendV6Data":null}`
	a, err := ParseLeaseAttrs([]byte(flanneld))
	if err != nil || a.PublicIP != netip.MustParseAddr("172.17.42.32") || a.VNI != 1 || a.VtepMAC.String() != "6a:1f:3e:00:11:22" {
		t.Fatalf("parsed flanneld value: %+v %v", a, err)
	}
	// Old flanneld (before v0.8) wrote no VNI.
	a, err = ParseLeaseAttrs([]byte(`{"PublicIP":"172.17.42.33","BackendType":"vxlan","BackendData":{"VtepMAC":"6a:1f:3e:00:11:22"}}`))
	if err != nil || a.VNI != 0 || mustConfig(t, testNet).checkLease(Lease{Subnet: netip.MustParsePrefix("172.16.3.0/24"), Attrs: a}) != nil {
		t.Fatalf("old flanneld value: %+v %v", a, err)
	}
	// Round trip through ours.
	a2, err := ParseLeaseAttrs(b)
	if err != nil || !sameAttrs(a2, ours) {
		t.Fatalf("round trip: %+v %v", a2, err)
	}
}

func TestParseLeaseAttrsHostile(t *testing.T) {
	cases := []struct{ in, want string }{
		{``, "not flannel's JSON"},
		{`garbage`, "not flannel's JSON"},
		{`[]`, "not flannel's JSON"},
		{`{"PublicIP":12}`, "not flannel's JSON"},
		{`{}`, "PublicIP missing"},
		{`{"PublicIP":"1.2.3"}`, `PublicIP "1.2.3"`},
		{`{"PublicIP":"fd00::1","BackendType":"vxlan"}`, `PublicIP "fd00::1"`},
		{`{"PublicIP":"1.2.3.4","BackendType":"vxlan"}`, "BackendData missing"},
		{`{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":"x"}`, "BackendData"},
		{`{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{"VNI":16777216,"VtepMAC":"b2:69:2c:67:63:b8"}}`, "VNI 16777216"},
		{`{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{"VNI":1e20,"VtepMAC":"b2:69:2c:67:63:b8"}}`, "BackendData"},
		{`{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}`, `VtepMAC "zz"`},
		{`{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"00:00:00:00:fe:80:00:00:00:00:00:00:00:00:00:01:00:00:00:00"}}`, "not a 6-byte MAC"},
	}
	for _, c := range cases {
		_, err := ParseLeaseAttrs([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseLeaseAttrs(%s) = %v, want %q", c.in, err, c.want)
		}
	}
	// Another backend type parses (the filter rejects it later).
	a, err := ParseLeaseAttrs([]byte(`{"PublicIP":"1.2.3.4","BackendType":"udp"}`))
	if err != nil || a.BackendType != "udp" {
		t.Fatalf("udp lease: %+v %v", a, err)
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"172.16.28.0-24", "10.0.0.0-8", "1.2.3.4-32", "fd00::-64", "172.16.28.0-24&fd00::-64", "x-y", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, p6, err := ParseDualKey(s)
		if err != nil {
			return
		}
		if !p.IsValid() || p.Masked() != p || DualKeyName(p, p6) != s {
			t.Fatalf("ParseDualKey(%q) = %v, %v: not canonical", s, p, p6)
		}
		if p6.IsValid() && (!p6.Addr().Is6() || p6.Masked() != p6 || !p.Addr().Is4()) {
			t.Fatalf("ParseDualKey(%q) = %v, %v: not an IPv4 and an IPv6 subnet", s, p, p6)
		}
	})
}

func FuzzParseLeaseAttrs(f *testing.F) {
	for _, s := range []string{
		`{"PublicIP":"172.17.42.31","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"}}`,
		`{"PublicIP":"172.17.42.32","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6a:1f:3e:00:11:22"},"BackendV6Data":null}`,
		`{"PublicIP":"1.2.3.4","BackendType":"udp"}`, `{}`, `null`, `"x"`,
		`{"PublicIP":"172.17.42.31","PublicIPv6":"fd00:17::31","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"},"BackendV6Data":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b9"}}`,
		`{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:17::31","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b9"}}`,
		` { "PublicIP" : "10.0.0.1" , "BackendType":"vxlan", "BackendData": { "VtepMAC":"b2:69:2c:67:63:b8", "VNI": 4294967295 } } `,
		`{"PublicIP":"10.0.0.1","PublicIP":null,"BackendType":"vxlan","BackendData":{"VNI":01,"VtepMAC":"b2:69:2c:67:63:b8"}}`,
		`{"publicip":"10.0.0.1","BackendType":"vxlan","BackendData":null}`,
		`{"PublicIP":"10.0.0.\u0031","BackendType":"vxlan","BackendData":{"VNI":1e0,"VtepMAC":"b2:69:2c:67:63:b8","x":1}}`,
		`{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":4294967296,"VtepMAC":"b2:69:2c:67:63:b8"}} x`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// The fast reader must agree with encoding/json on all it accepts.
		if v, ok := scanLeaseValue(data); ok {
			fa, ferr := v.attrs()
			w, derr := decodeLeaseValue(data)
			if derr != nil {
				t.Fatalf("scanLeaseValue accepted %q, which encoding/json rejects: %v", data, derr)
			}
			sa, serr := w.attrs()
			if fmt.Sprint(ferr) != fmt.Sprint(serr) || !sameAttrs(fa, sa) {
				t.Fatalf("%q: fast %+v %v, encoding/json %+v %v", data, fa, ferr, sa, serr)
			}
		}
		a, err := ParseLeaseAttrs(data)
		if err != nil {
			return
		}
		if !a.PublicIP.IsValid() && a.BackendType == "vxlan" || a.PublicIP6.IsValid() && (!a.PublicIP6.Is6() || !a.PublicIP.Is4()) {
			t.Fatalf("accepted PublicIP %v, PublicIPv6 %v", a.PublicIP, a.PublicIP6)
		}
		if a.BackendType != "vxlan" {
			return
		}
		if len(a.VtepMAC) != 6 || a.VNI > maxVNI {
			t.Fatalf("accepted vxlan attrs %+v", a)
		}
		b, err := a.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		a2, err := ParseLeaseAttrs(b)
		if err != nil || !sameAttrs(a, a2) {
			t.Fatalf("round trip %+v -> %s -> %+v %v", a, b, a2, err)
		}
	})
}

// TestScanLeaseValueForms checks that the values flanneld and weft write
// take the fast path (anything else still parses, through encoding/json).
func TestScanLeaseValueForms(t *testing.T) {
	a := LeaseAttrs{PublicIP: netip.MustParseAddr("172.17.42.31"), BackendType: "vxlan", VNI: 1,
		VtepMAC: net.HardwareAddr{0xb2, 0x69, 0x2c, 0x67, 0x63, 0xb8}}
	ours, err := a.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		string(ours),
		// flanneld v0.2x, IPv4 only.
		`{"PublicIP":"172.17.42.31","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:69:2c:67:63:b8"},"BackendV6Data":null}`,
		// flanneld before v0.8: no VNI.
		`{"PublicIP":"172.17.42.31","BackendType":"vxlan","BackendData":{"VtepMAC":"b2:69:2c:67:63:b8"}}`,
	} {
		v, ok := scanLeaseValue([]byte(s))
		if !ok {
			t.Errorf("%s: not read by the fast path", s)
			continue
		}
		got, err := v.attrs()
		w, _ := decodeLeaseValue([]byte(s))
		want, _ := w.attrs()
		if err != nil || !sameAttrs(got, want) || got.PublicIP != a.PublicIP || !bytes.Equal(got.VtepMAC, a.VtepMAC) {
			t.Errorf("%s: fast path gives %+v %v", s, got, err)
		}
	}
}

func BenchmarkParseLeaseAttrs(b *testing.B) {
	v := []byte(`{"PublicIP":"10.250.3.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ce:6a:20:de:17:f8"}}`)
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ParseLeaseAttrs(v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w, err := decodeLeaseValue(v)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := w.attrs(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
