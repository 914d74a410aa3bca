package network

import (
	"encoding/binary"
	"testing"
)

// nftMsg builds one nf_tables notification: the netlink header, nfgenmsg and
// the table name as attribute 1.
func nftMsg(msg uint8, table string) []byte {
	attr := make([]byte, 4, 4+len(table)+4)
	attr = append(attr, table...)
	attr = append(attr, 0)
	binary.NativeEndian.PutUint16(attr[0:2], uint16(len(attr)))
	binary.NativeEndian.PutUint16(attr[2:4], 1)
	for len(attr)%4 != 0 {
		attr = append(attr, 0)
	}
	b := make([]byte, 16+4, 16+4+len(attr))
	b = append(b, attr...)
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:6], 10<<8|uint16(msg))
	return b
}

func TestConcernsRules(t *testing.T) {
	const newRule, newSetElem, delSetElem, newGen, newChain = 6, 12, 14, 16, 3
	join := func(ms ...[]byte) []byte {
		var b []byte
		for _, m := range ms {
			b = append(b, m...)
		}
		return b
	}
	for _, c := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"the ingress filter's own set changes", join(nftMsg(newSetElem, "weft"), nftMsg(delSetElem, "weft"), nftMsg(newGen, "")), false},
		{"the service proxy's table", join(nftMsg(newRule, "weft-svc"), nftMsg(newSetElem, "weft-svc"), nftMsg(newGen, "")), false},
		{"an iptables-nft rule", join(nftMsg(newRule, "filter"), nftMsg(newGen, "")), true},
		{"a rule of the ingress table (someone edits it)", nftMsg(newRule, "weft"), true},
		{"a chain of the ingress table", nftMsg(newChain, "weft"), true},
		{"set elements of another table", nftMsg(newSetElem, "nat"), true},
		{"ours, then an iptables change in one datagram", join(nftMsg(newSetElem, "weft"), nftMsg(newRule, "nat")), true},
		{"malformed", []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17}, true},
	} {
		if got := concernsRules(c.b); got != c.want {
			t.Errorf("%s: concernsRules = %v, want %v", c.name, got, c.want)
		}
	}
}
