package subnet

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MaxValueSize is the largest value weft parses, of a lease or of the
// config: a lease is under 200 bytes and a config under 300. A bigger value
// is an invalid entry with its size as the reason; it is never read as a
// deletion. Listings keep only a short note of its size, so that a prefix
// full of megabyte values costs weftd no more memory than one page of them.
const MaxValueSize = 64 << 10

// pageMax is how many keys one listing request asks for at most: 4,000
// leases of 200 bytes are one page of under a megabyte, so a cold start
// makes the same requests at any cluster size weft is measured at. Pages
// shrink when one is larger than the client's receive limit (megabyte
// values), and grow back while they carry less than pageGrowBytes.
const pageMax = 5000

// pageGrowBytes: a page that carried less than this lets the next ask for
// twice as many keys.
const pageGrowBytes = 1 << 20

// oversized starts the note that replaces a value over MaxValueSize in a
// listing; the value's size in bytes follows. The NUL makes it unparseable
// as anything else.
const oversized = "\x00weft: value over the size limit, bytes: "

// capValue replaces kv's value with a note of its size if it is over
// MaxValueSize, so that the big value can be collected.
func capValue(kv *mvccpb.KeyValue) {
	if len(kv.Value) > MaxValueSize {
		kv.Value = []byte(oversized + strconv.Itoa(len(kv.Value)))
	}
}

// MaxKeySize is the longest key weft keeps as it is. A subnet key is the
// prefix and at most 18 bytes; a longer one is kept as its first 128 bytes,
// its size and a hash, which tell keys apart and never parse as a subnet.
const MaxKeySize = 1 << 10

// capKey shortens kv's key if it is over MaxKeySize (see there).
func capKey(kv *mvccpb.KeyValue) {
	if len(kv.Key) > MaxKeySize {
		sum := sha256.Sum256(kv.Key)
		kv.Key = fmt.Appendf(nil, "%s\x00weft: key of %d bytes, sha256 %x", kv.Key[:128], len(kv.Key), sum[:12])
	}
}

// valueSizeErr says why value is too big to parse, or nil.
func valueSizeErr(what string, value []byte) error {
	n := len(value)
	if s, ok := strings.CutPrefix(string(value), oversized); ok {
		n, _ = strconv.Atoi(s)
	} else if n <= MaxValueSize {
		return nil
	}
	return fmt.Errorf("%s: %d bytes, over the %d-byte limit", what, n, MaxValueSize)
}

// rangeAll reads every key under prefix in pages, all at the revision of
// the first page, so that the listing is one consistent view. Values over
// MaxValueSize are replaced by a note of their size as each page arrives
// (capValue). A page bigger than the client's receive limit (etcdconn sets
// it) is asked again with a sixteenth of the keys, down to one; a page that
// carried less than pageGrowBytes lets the next one double, up to r.pageMax.
// The size reached is where the next listing starts, so that a prefix full
// of megabyte values costs etcd one oversized response, not one a listing.
// A compaction between two pages fails the listing; callers retry.
func (r *Registry) rangeAll(ctx context.Context, prefix string) (*clientv3.GetResponse, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	limit := int(r.pageLimit.Load())
	if limit <= 0 || limit > r.pageMax {
		limit = r.pageMax
	}
	defer func() { r.pageLimit.Store(int64(limit)) }()
	var out *clientv3.GetResponse
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(limit))}
		if out != nil {
			opts = append(opts, clientv3.WithRev(out.Header.Revision))
		}
		var resp *clientv3.GetResponse
		err := r.timed("get", func() (err error) {
			c, cancel := context.WithTimeout(ctx, requestTimeout)
			defer cancel()
			resp, err = r.cli.Get(c, from, opts...)
			return
		})
		if status.Code(err) == codes.ResourceExhausted && limit > 1 && ctx.Err() == nil {
			limit = max(1, limit/16)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", prefix, err)
		}
		size := 0
		if n := len(resp.Kvs); n > 0 {
			from = string(resp.Kvs[n-1].Key) + "\x00" // the next page's start, before capKey
		}
		for _, kv := range resp.Kvs {
			size += len(kv.Key) + len(kv.Value)
			capKey(kv)
			capValue(kv)
		}
		if size < pageGrowBytes {
			limit = min(r.pageMax, limit*2)
		}
		if out == nil {
			out = resp
		} else {
			out.Kvs = append(out.Kvs, resp.Kvs...)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			out.More, out.Count = false, int64(len(out.Kvs))
			return out, nil
		}
	}
}
