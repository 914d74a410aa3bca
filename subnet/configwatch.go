package subnet

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ConfigError is a network config in etcd that weft refuses: Err says why.
type ConfigError struct {
	Key      string
	Revision int64 // the key's mod revision
	Err      error
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("network config at %s (mod revision %d) refused: %v", e.Key, e.Revision, e.Err)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// ReadConfig reads and parses the network config, and returns the key's mod
// revision with it. A config that is there but invalid is a *ConfigError; a
// missing one wraps ErrNoConfig.
func (r *Registry) ReadConfig(ctx context.Context) (Config, int64, error) {
	var resp *clientv3.GetResponse
	err := r.timed("get", func() (err error) { resp, err = r.cli.Get(ctx, r.configKey()); return })
	if err != nil {
		return Config{}, 0, fmt.Errorf("reading %s: %w", r.configKey(), err)
	}
	// etcd answered: it is up even if the config is missing or bad.
	r.m.etcdUp.Set(1)
	r.markSync()
	if len(resp.Kvs) == 0 {
		return Config{}, 0, fmt.Errorf("reading %s: %w", r.configKey(), ErrNoConfig)
	}
	kv := resp.Kvs[0]
	c, err := ParseConfig(kv.Value)
	if err != nil {
		return Config{}, kv.ModRevision, &ConfigError{Key: r.configKey(), Revision: kv.ModRevision, Err: err}
	}
	return c, kv.ModRevision, nil
}

// ConfigUpdate is the config key after a change.
type ConfigUpdate struct {
	Config   Config
	Revision int64 // the key's mod revision; 0 when deleted
	Err      error // the key was deleted (ErrNoConfig) or holds an invalid config (*ConfigError)
}

// WatchConfig calls out after every change of the config key made after
// revision rev, until ctx ends; it returns ctx.Err(). A broken watch (error,
// compaction) or etcd coming back from an outage or a restore is followed by
// a read of the key, reported if its mod revision is not the last one
// reported, and a new watch from there. Values over MaxValueSize are refused
// unparsed.
func (r *Registry) WatchConfig(ctx context.Context, rev int64, out func(ConfigUpdate)) error {
	last := rev
	bo := backoff{min: r.backoffMin, max: r.backoffMax}
	for ctx.Err() == nil {
		comeback := r.comebackSignal()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := r.cli.Watch(wctx, r.configKey(), clientv3.WithRev(rev+1))
		broken := false
		for !broken {
			select {
			case <-ctx.Done():
				cancel()
				return ctx.Err()
			case <-comeback:
				broken = true
			case wr, ok := <-wch:
				if !ok || wr.Err() != nil || wr.CompactRevision != 0 || errors.Is(wr.Err(), rpctypes.ErrCompacted) {
					broken = true
					break
				}
				bo.reset()
				if len(wr.Events) == 0 {
					continue
				}
				ev := wr.Events[len(wr.Events)-1] // only the latest value matters
				rev = wr.Header.Revision
				if ev.Type == clientv3.EventTypeDelete {
					last = 0
					out(ConfigUpdate{Err: fmt.Errorf("%s: %w", r.configKey(), ErrNoConfig)})
					continue
				}
				last = ev.Kv.ModRevision
				out(r.configUpdate(ev.Kv.Value, ev.Kv.ModRevision))
			}
		}
		cancel()
		if !sleep(ctx, bo.next()) {
			break
		}
		c, mod, err := r.ReadConfig(ctx)
		var ce *ConfigError
		switch {
		case errors.Is(err, ErrNoConfig):
			if last != 0 {
				last = 0
				out(ConfigUpdate{Err: err})
			}
		case errors.As(err, &ce):
			if mod != last {
				last = mod
				out(ConfigUpdate{Revision: mod, Err: err})
			}
		case err != nil:
			continue // etcd unreachable: try again
		case mod != last:
			last = mod
			out(ConfigUpdate{Config: c, Revision: mod})
		}
		// Watch on from the revision read at; a restored etcd's may be lower.
		if resp, err := r.cli.Get(ctx, r.configKey(), clientv3.WithCountOnly()); err == nil {
			rev = resp.Header.Revision
		}
	}
	return ctx.Err()
}

func (r *Registry) configUpdate(value []byte, mod int64) ConfigUpdate {
	c, err := ParseConfig(value)
	if err != nil {
		return ConfigUpdate{Revision: mod, Err: &ConfigError{Key: r.configKey(), Revision: mod, Err: err}}
	}
	return ConfigUpdate{Config: c, Revision: mod}
}

// LiveChange says whether a running weftd can apply next in place of cur,
// and if not, why it needs a restart. What can change live is the range
// subnets are handed out from growing within the same Network (SubnetMin
// lowered, SubnetMax raised): every lease valid before stays valid, so peers
// only gain. Everything else (Network, SubnetLen, the backend, and a range
// that shrinks, which would turn existing leases invalid on some nodes and
// not others) is applied by restarting weftd, never half-way.
func LiveChange(cur, next Config) (bool, string) {
	var why []string
	if next.Network != cur.Network {
		why = append(why, fmt.Sprintf("Network %v -> %v", cur.Network, next.Network))
	}
	if next.SubnetLen != cur.SubnetLen {
		why = append(why, fmt.Sprintf("SubnetLen %d -> %d", cur.SubnetLen, next.SubnetLen))
	}
	if next.Backend != cur.Backend {
		why = append(why, fmt.Sprintf("Backend %+v -> %+v", cur.Backend, next.Backend))
	}
	// The IPv6 half is applied by a restart, whatever changed in it: its
	// range is as much part of every lease's validity as the first.
	if next.IPv6 != cur.IPv6 {
		why = append(why, fmt.Sprintf("IPv6Network %v/%d %v..%v -> %v/%d %v..%v", cur.IPv6.Network, cur.IPv6.SubnetLen,
			cur.IPv6.SubnetMin, cur.IPv6.SubnetMax, next.IPv6.Network, next.IPv6.SubnetLen, next.IPv6.SubnetMin, next.IPv6.SubnetMax))
	}
	if len(why) == 0 {
		if cur.SubnetMin.Less(next.SubnetMin) {
			why = append(why, fmt.Sprintf("SubnetMin raised %v -> %v", cur.SubnetMin, next.SubnetMin))
		}
		if next.SubnetMax.Less(cur.SubnetMax) {
			why = append(why, fmt.Sprintf("SubnetMax lowered %v -> %v", cur.SubnetMax, next.SubnetMax))
		}
	}
	if len(why) > 0 {
		return false, strings.Join(why, ", ")
	}
	return true, ""
}

// ErrConfigChanged means the config key is no longer at the revision a
// compare-and-swap expected.
var ErrConfigChanged = errors.New("the config in etcd changed since it was read")

// RawConfig is the config key as stored: its bytes and mod revision (0 when
// the key does not exist), unparsed, so that a tool can show and replace a
// config weft refuses.
func (r *Registry) RawConfig(ctx context.Context) ([]byte, int64, error) {
	resp, err := r.cli.Get(ctx, r.configKey())
	if err != nil {
		return nil, 0, fmt.Errorf("reading %s: %w", r.configKey(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	return resp.Kvs[0].Value, resp.Kvs[0].ModRevision, nil
}

// PutConfig writes c only if the config key's mod revision is still rev (0:
// only if there is no config yet), in one transaction; otherwise it returns
// ErrConfigChanged and writes nothing. It returns the new mod revision.
func (r *Registry) PutConfig(ctx context.Context, c Config, rev int64) (int64, error) {
	var resp *clientv3.TxnResponse
	err := r.timed("txn", func() (err error) {
		resp, err = r.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(r.configKey()), "=", rev)).
			Then(clientv3.OpPut(r.configKey(), string(c.JSON()))).Commit()
		return
	})
	if err != nil {
		return 0, fmt.Errorf("writing %s: %w", r.configKey(), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("writing %s: %w", r.configKey(), ErrConfigChanged)
	}
	return resp.Header.Revision, nil
}
