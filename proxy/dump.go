package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/rtnl"
)

// countRules returns how many rules the chain of table TableName holds, by a
// netlink dump that only counts the answers. (google/nftables' GetRules
// decodes every expression and fails on some it cannot read back.)
func countRules(nsFd int, chain string) (int, error) {
	n := 0
	err := dump(nsFd, unix.NFT_MSG_GETRULE, unix.NFTA_RULE_TABLE, unix.NFTA_RULE_CHAIN, chain, func([]byte) { n++ })
	if err != nil {
		return 0, fmt.Errorf("reading the rules of %s: %w", chain, err)
	}
	return n, nil
}

// CountElements returns how many elements the set (or map) of table
// TableName holds in the namespace nsFd (0: the caller's), without decoding
// them: verifying 100,000 elements must not cost the loop. The bench reads
// the kernel with it too.
func CountElements(nsFd int, set string) (int, error) { return countElems(nsFd, set) }

func countElems(nsFd int, set string) (int, error) {
	n := 0
	err := dump(nsFd, unix.NFT_MSG_GETSETELEM, unix.NFTA_SET_ELEM_LIST_TABLE, unix.NFTA_SET_ELEM_LIST_SET, set, func(data []byte) {
		attrs(data, func(typ uint16, val []byte) bool {
			if typ == unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				attrs(append(make([]byte, 4), val...), func(uint16, []byte) bool { n++; return true })
			}
			return true
		})
	})
	if err != nil {
		return 0, fmt.Errorf("reading the elements of %s: %w", set, err)
	}
	return n, nil
}

// dump sends a dump request for the object named name (attribute nameAttr)
// of table TableName (attribute tableAttr) and calls f with each answer's
// payload.
func dump(nsFd int, msgType, tableAttr, nameAttr uint16, name string, f func([]byte)) error {
	fd, err := rtnl.OpenNetfilter(nsFd)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	attr := func(typ uint16, s string) []byte {
		v := append([]byte(s), 0)
		b := make([]byte, 4+(len(v)+3)&^3)
		binary.NativeEndian.PutUint16(b, uint16(4+len(v)))
		binary.NativeEndian.PutUint16(b[2:], typ)
		copy(b[4:], v)
		return b
	}
	body := []byte{unix.NFPROTO_IPV4, unix.NFNETLINK_V0, 0, 0}
	body = append(body, attr(tableAttr, TableName)...)
	body = append(body, attr(nameAttr, name)...)
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(msg, uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], unix.NFNL_SUBSYS_NFTABLES<<8|msgType)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(msg[8:], 1)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for {
		r, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		for b := buf[:r]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return errors.New("malformed netlink answer")
			}
			switch binary.NativeEndian.Uint16(b[4:]) {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if code := int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:])); code != 0 {
					return unix.Errno(-code)
				}
			default:
				f(b[unix.NLMSG_HDRLEN:l])
			}
			b = b[min(len(b), (l+3)&^3):]
		}
	}
}

// ServiceKey is the key of a service port in the services and no-endpoints
// maps.
func ServiceKey(vip netip.Addr, udp bool, port uint16) []byte {
	proto := uint8(unix.IPPROTO_TCP)
	if udp {
		proto = unix.IPPROTO_UDP
	}
	return dispatchElem(vip, proto, port)
}

// HasElement reports whether set of table TableName in namespace nsFd holds
// key: one lookup in the kernel, however large the set.
func HasElement(nsFd int, set string, key []byte) (bool, error) {
	fd, err := rtnl.OpenNetfilter(nsFd)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	attr := func(typ uint16, v []byte) []byte {
		b := make([]byte, 4+(len(v)+3)&^3)
		binary.NativeEndian.PutUint16(b, uint16(4+len(v)))
		binary.NativeEndian.PutUint16(b[2:], typ)
		copy(b[4:], v)
		return b
	}
	data := attr(unix.NFTA_DATA_VALUE, key)
	elem := attr(unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_KEY, data)
	list := attr(unix.NLA_F_NESTED|1, elem) // NFTA_LIST_ELEM
	body := []byte{unix.NFPROTO_IPV4, unix.NFNETLINK_V0, 0, 0}
	body = append(body, attr(unix.NFTA_SET_ELEM_LIST_TABLE, append([]byte(TableName), 0))...)
	body = append(body, attr(unix.NFTA_SET_ELEM_LIST_SET, append([]byte(set), 0))...)
	body = append(body, attr(unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_LIST_ELEMENTS, list)...)
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(msg, uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETSETELEM)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, err
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return false, err
	}
	if n < unix.NLMSG_HDRLEN+4 {
		return false, errors.New("short netlink answer")
	}
	if binary.NativeEndian.Uint16(buf[4:]) == unix.NLMSG_ERROR {
		code := int32(binary.NativeEndian.Uint32(buf[unix.NLMSG_HDRLEN:]))
		if code == -int32(unix.ENOENT) {
			return false, nil
		}
		if code != 0 {
			return false, unix.Errno(-code)
		}
	}
	return true, nil
}
