package network

import (
	"strings"
	"testing"
)

func TestChecksumPolicy(t *testing.T) {
	for _, tc := range []struct {
		mode, release string
		on            bool
		why           string
	}{
		{"auto", "5.4.0-150-generic", false, "older than 5.7"},
		{"auto", "4.18.0-553.el8_10.x86_64", false, "older than 5.7"},
		{"auto", "5.6.19", false, "older than 5.7"},
		{"auto", "5.7.0", true, "has the VXLAN checksum fix"},
		{"auto", "6.18.44-fc-v1045", true, "has the VXLAN checksum fix"},
		{"auto", "10.0-rc1", true, "has the VXLAN checksum fix"},
		{"", "5.10.0-28-amd64", true, "fix"},
		{"auto", "garbage", false, "not understood"},
		{"on", "4.9.0", true, "--tx-checksum-offload=on"},
		{"off", "6.1.0", false, "--tx-checksum-offload=off"},
	} {
		on, why, err := ChecksumPolicy(tc.mode, tc.release)
		if err != nil || on != tc.on || !strings.Contains(why, tc.why) {
			t.Errorf("ChecksumPolicy(%q, %q) = %v, %q, %v; want %v and %q", tc.mode, tc.release, on, why, err, tc.on, tc.why)
		}
	}
	if _, _, err := ChecksumPolicy("maybe", "6.1.0"); err == nil || !strings.Contains(err.Error(), `"maybe": want auto, on or off`) {
		t.Errorf("bad mode: %v", err)
	}
}

func FuzzKernelVersion(f *testing.F) {
	for _, s := range []string{"5.4.0-150-generic", "6.18.44", "", ".", "5.", "5.x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, ok := kernelVersion(s)
		if ok && (v[0] < 0 || v[1] < 0) {
			t.Fatalf("%q: %v", s, v)
		}
	})
}
