package subnet

import (
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// deniedWrite reports whether err is etcd refusing this node's user a
// request, and says so once per Hold, at error level: unlike an outage it
// will not pass by itself. A node whose etcd role may only read (see
// deploy/etcd/setup-roles.sh) starts only on a reservation that already
// carries exactly the value it would write, which the log line shows.
func (h *holder) deniedWrite(err error) bool {
	if !errors.Is(err, rpctypes.ErrPermissionDenied) && rpctypes.Error(err) != rpctypes.ErrPermissionDenied {
		return false
	}
	if !h.deniedLogged {
		h.deniedLogged = true
		h.r.log.Error("etcd denies this node's user a write under the subnets prefix; retrying. "+
			"A node with a read-only etcd role needs a reservation holding exactly this value",
			"prefix", h.r.subnetsPrefix(), "value", h.value, "err", err)
	}
	return true
}
