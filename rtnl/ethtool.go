package rtnl

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ethtoolValue is struct ethtool_value (include/uapi/linux/ethtool.h).
type ethtoolValue struct {
	cmd, data uint32
}

// ifreqData is struct ifreq with its union used as a pointer (ifr_data).
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// TxChecksum reports whether transmit checksum offload is on for the
// device name in ns (ethtool -k's tx-checksumming).
func TxChecksum(ns netns.NsHandle, name string) (bool, error) {
	v, err := ethtool(ns, name, unix.ETHTOOL_GTXCSUM, 0)
	if err != nil {
		return false, fmt.Errorf("reading tx checksum offload of %s: %w", name, err)
	}
	return v != 0, nil
}

// SetTxChecksum turns transmit checksum offload on or off for the device
// name in ns (ethtool -K <name> tx on|off).
func SetTxChecksum(ns netns.NsHandle, name string, on bool) error {
	var v uint32
	if on {
		v = 1
	}
	if _, err := ethtool(ns, name, unix.ETHTOOL_STXCSUM, v); err != nil {
		return fmt.Errorf("setting tx checksum offload of %s to %t: %w", name, on, err)
	}
	return nil
}

// ethtool runs one ETHTOOL_[GS]* command on a datagram socket made in ns
// and returns the value the kernel wrote back.
func ethtool(ns netns.NsHandle, name string, cmd, data uint32) (uint32, error) {
	if len(name) >= unix.IFNAMSIZ {
		return 0, fmt.Errorf("device name %q too long", name)
	}
	var fd int
	err := inNamespace(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			// An IPv6-only kernel has no AF_INET sockets.
			fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	v := &ethtoolValue{cmd: cmd, data: data}
	var ifr ifreqData
	copy(ifr.name[:], name)
	ifr.data = uintptr(unsafe.Pointer(v))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(v)
	if errno != 0 {
		return 0, errno
	}
	return v.data, nil
}
