// Package rtnl is weft's route netlink protocol code: the bytes of the
// requests that add and remove routes, neighbours and VXLAN FDB entries, the
// batch writer that sends hundreds of them in one sendmsg, the dumps that
// read them back, the parsers of what the kernel sends, and the socket that
// follows its notifications. The packages that decide (backend/vxlan) read
// at the level of plans and ops and never see a netlink header.
//
// One kind of entry, one type, one parser, one dump: Route (ParseRoute,
// Conn.DumpRoutes), Neigh (ParseNeigh, Conn.DumpNeighs) and FDB (ParseFDB,
// Conn.DumpFDB). An Op is one change to one of them; AppendOp builds its
// request, Conn.Write sends a list of them in order. Both address families
// go through the same code: a request's family is its address's.
//
// Why by hand and not through a netlink library: a write asks for an
// acknowledgement only on its last request (the kernel reports every
// failure anyway, by sequence number, which maps it back to its op), so
// 4,000 peers cost a handful of system calls; and dumps are filtered to the
// device by the kernel itself, with strict checking on (netlink v1.3.1's
// neighbour dump request carries padding garbage that a strict kernel
// rejects). Every dump may be interrupted (NLM_F_DUMP_INTR) when the table
// changes under it: callers go through RetryDump.
//
// The package is protocol only: it keeps no picture of what should be in
// the kernel, and it never decides what an entry should be.
package rtnl
