package subnet

import (
	"encoding/json"
	"fmt"
	"math"
)

// leaseValue is what a lease value says, before it is checked.
type leaseValue struct {
	PublicIP    string
	BackendType string
	BackendData bool // present and not null
	VNI         uint32
	VtepMAC     string
	dataErr     error // BackendData is not the vxlan shape (decodeLeaseValue only)

	PublicIP6     string
	BackendV6Data bool
	VNI6          uint32
	VtepMAC6      string
	dataErr6      error
}

// decodeLeaseValue reads a lease value with encoding/json: any JSON flannel
// or an operator may write.
func decodeLeaseValue(data []byte) (leaseValue, error) {
	var w struct {
		wireAttrs
		PublicIPv6 *string // null is absent
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return leaseValue{}, fmt.Errorf("lease value: not flannel's JSON: %w", err)
	}
	v := leaseValue{PublicIP: w.PublicIP, BackendType: w.BackendType,
		BackendData:   len(w.BackendData) > 0 && string(w.BackendData) != "null",
		BackendV6Data: len(w.BackendV6Data) > 0 && string(w.BackendV6Data) != "null"}
	if w.PublicIPv6 != nil {
		v.PublicIP6 = *w.PublicIPv6
	}
	if v.BackendType == "vxlan" && v.BackendData {
		var x wireVXLAN
		if err := json.Unmarshal(w.BackendData, &x); err != nil {
			v.dataErr = fmt.Errorf("lease value: BackendData: %w", err)
		}
		v.VNI, v.VtepMAC = x.VNI, x.VtepMAC
	}
	if v.BackendType == "vxlan" && v.BackendV6Data {
		var x wireVXLAN
		if err := json.Unmarshal(w.BackendV6Data, &x); err != nil {
			v.dataErr6 = fmt.Errorf("lease value: BackendV6Data: %w", err)
		}
		v.VNI6, v.VtepMAC6 = x.VNI, x.VtepMAC
	}
	return v, nil
}

// scanLeaseValue reads a lease value as flanneld and weft write it, eight
// times faster than encoding/json and with a tenth of the garbage: a burst
// of 1,000 new leases, and a listing of 4,000, spent most of their time in
// reflection. It accepts only a plain subset of JSON (exact field names,
// strings of printable ASCII without escapes, VNI as a plain integer) and
// says ok=false for anything else, which decodeLeaseValue then reads. For
// every input it accepts, the result is what decodeLeaseValue gives
// (FuzzParseLeaseAttrs checks this).
func scanLeaseValue(data []byte) (v leaseValue, ok bool) {
	s := scanner{b: data}
	if !s.members(func(key []byte) bool {
		switch string(key) {
		case "PublicIP":
			v.PublicIP, ok = s.str()
		case "BackendType":
			v.BackendType, ok = s.str()
		case "PublicIPv6":
			v.PublicIP6 = ""
			if ok = s.null(); !ok {
				v.PublicIP6, ok = s.str()
			}
		case "BackendData":
			v.BackendData, v.VNI, v.VtepMAC, ok = s.vxlanData()
		case "BackendV6Data":
			v.BackendV6Data, v.VNI6, v.VtepMAC6, ok = s.vxlanData()
		default:
			return false
		}
		return ok
	}) {
		return leaseValue{}, false
	}
	if s.space(); s.i != len(s.b) {
		return leaseValue{}, false
	}
	return v, true
}

// vxlanData reads null or {"VNI": n, "VtepMAC": "..."} (either member
// optional, no other).
func (s *scanner) vxlanData() (present bool, vni uint32, mac string, ok bool) {
	if s.null() {
		return false, 0, "", true
	}
	ok = s.members(func(key []byte) bool {
		var ok bool
		switch string(key) {
		case "VNI":
			vni, ok = s.uint32()
		case "VtepMAC":
			mac, ok = s.str()
		}
		return ok
	})
	return true, vni, mac, ok
}

// scanner walks the plain subset of JSON scanLeaseValue accepts.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

func (s *scanner) byte(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// members reads {"key": value, ...}, calling member to read each value.
func (s *scanner) members(member func(key []byte) bool) bool {
	if !s.byte('{') {
		return false
	}
	if s.byte('}') {
		return true
	}
	for {
		k, ok := s.raw()
		if !ok || !s.byte(':') || !member(k) {
			return false
		}
		if s.byte('}') {
			return true
		}
		if !s.byte(',') {
			return false
		}
	}
}

// raw reads a string of printable ASCII with no escapes, without copying.
func (s *scanner) raw() ([]byte, bool) {
	if !s.byte('"') {
		return nil, false
	}
	for j := s.i; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			v := s.b[s.i:j]
			s.i = j + 1
			return v, true
		case c < 0x20 || c > 0x7e || c == '\\':
			return nil, false
		}
	}
	return nil, false
}

func (s *scanner) str() (string, bool) {
	b, ok := s.raw()
	return string(b), ok
}

func (s *scanner) null() bool {
	s.space()
	if len(s.b)-s.i >= 4 && string(s.b[s.i:s.i+4]) == "null" {
		s.i += 4
		return true
	}
	return false
}

// uint32 reads a JSON integer without sign, fraction or exponent that fits.
func (s *scanner) uint32() (uint32, bool) {
	s.space()
	j := s.i
	var n uint64
	for j < len(s.b) && s.b[j] >= '0' && s.b[j] <= '9' && j-s.i < 11 {
		n = n*10 + uint64(s.b[j]-'0')
		j++
	}
	switch {
	case j == s.i, j-s.i > 10, n > math.MaxUint32, s.b[s.i] == '0' && j-s.i > 1:
		return 0, false
	case j < len(s.b) && (s.b[j] == '.' || s.b[j] == 'e' || s.b[j] == 'E'):
		return 0, false
	}
	s.i = j
	return uint32(n), true
}
