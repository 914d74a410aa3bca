package network

import (
	"fmt"
	"strconv"
	"strings"
)

// Transmit checksum offload of the VXLAN devices (--tx-checksum-offload).
//
// Kernels before 5.7 compute a wrong UDP checksum for VXLAN packets whose
// inner packet was NATed (a service's DNAT, masquerade) when the device
// offloads the checksum; the receiver drops them, and TCP connections through
// a service stall for 63 s (the SYN retries). The fix went into 5.7 and was
// backported by some distributions. Turning offload off on flannel.1 works
// around it everywhere, and costs most of pod-to-pod throughput on kernels
// that do not need it, since every packet's checksum is then computed in
// software. So "auto" turns it off only on kernels before 5.7; a kernel with
// the backport can be given "on".
const (
	ChecksumAuto = "auto"
	ChecksumOn   = "on"
	ChecksumOff  = "off"
)

// fixedIn is the first kernel release with the fix.
var fixedIn = [2]int{5, 7}

// ChecksumPolicy decides whether tx checksum offload stays on, for mode
// (auto, on or off) on the kernel release (uname -r, e.g. 6.1.0-18-amd64),
// and says why in words for the log.
func ChecksumPolicy(mode, release string) (on bool, why string, err error) {
	switch mode {
	case ChecksumOn:
		return true, "--tx-checksum-offload=on", nil
	case ChecksumOff:
		return false, "--tx-checksum-offload=off", nil
	case ChecksumAuto, "":
	default:
		return false, "", fmt.Errorf("--tx-checksum-offload %q: want auto, on or off", mode)
	}
	v, ok := kernelVersion(release)
	switch {
	case !ok:
		return false, fmt.Sprintf("kernel release %q not understood: offload off, the safe side (give --tx-checksum-offload=on if the kernel is 5.7 or later)", release), nil
	case v[0] < fixedIn[0] || v[0] == fixedIn[0] && v[1] < fixedIn[1]:
		return false, fmt.Sprintf("kernel %d.%d is older than 5.7: its VXLAN checksums of NATed traffic are wrong with offload on (63 s connection stalls); "+
			"give --tx-checksum-offload=on if the fix was backported", v[0], v[1]), nil
	}
	return true, fmt.Sprintf("kernel %d.%d has the VXLAN checksum fix of 5.7", v[0], v[1]), nil
}

// kernelVersion reads major and minor from a release string.
func kernelVersion(release string) ([2]int, bool) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return [2]int{}, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor := parts[1]
	if i := strings.IndexFunc(minor, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minor = minor[:i]
	}
	m, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil || major < 0 || m < 0 {
		return [2]int{}, false
	}
	return [2]int{major, m}, true
}
