package network

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/rtnl"
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
	const (
		newRule, newChain      = unix.NFT_MSG_NEWRULE, unix.NFT_MSG_NEWCHAIN
		newSetElem, delSetElem = unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM
		newGen                 = unix.NFT_MSG_NEWGEN
	)
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

// The notifications the kernel really sends for the ingress filter's
// element updates (each closed by a generation message) do not concern the
// rules; an iptables-style change by someone else does. Each peer change
// used to set off four runs of iptables because the generation message was
// taken for someone else's change.
func TestConcernsRulesKernel(t *testing.T) {
	cfg := IngressConfig{Network: netip.MustParsePrefix("172.16.0.0/12"), Subnet: netip.MustParsePrefix("172.16.28.0/24"), Device: "flannel.1", Port: 8472}
	g, nft, cfg := realIngress(t, cfg)
	if _, err := g.Ensure(); err != nil {
		t.Fatal(err)
	}
	fd, err := rtnl.OpenNetfilter(cfg.NetNSFd)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	// read returns how many datagrams arrived and how many concern the rules.
	read := func() (n, concern int) {
		buf := make([]byte, 64<<10)
		for {
			k, _, err := unix.Recvfrom(fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				return n, concern
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
			if concernsRules(buf[:k]) {
				concern++
			}
		}
	}
	a := []netip.Addr{netip.MustParseAddr("172.17.42.31")}
	if err := g.Admit(a); err != nil {
		t.Fatal(err)
	}
	if err := g.Release(a); err != nil {
		t.Fatal(err)
	}
	if n, c := read(); n == 0 || c != 0 {
		t.Fatalf("an Admit and a Release: %d datagrams, %d concerning the rules; want some, none concerning", n, c)
	}
	if out, err := exec.Command("ip", "netns", "exec", "weft-ingress-"+t.Name(), "nft", "add", "table", "ip", "someone").CombinedOutput(); err != nil {
		t.Fatalf("nft add table: %v\n%s", err, out)
	}
	_ = nft
	if n, c := read(); n == 0 || c == 0 {
		t.Fatalf("another table added: %d datagrams, %d concerning the rules; want the check", n, c)
	}
}
