package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

var discard = slog.New(slog.DiscardHandler)

// WaitFor calls cond every interval until it returns true, the timeout passes or ctx ends.
// cond's string describes what it saw (e.g. the routes it read); on failure the error
// carries the last one, so a test says what the kernel looked like, not just "timed out".
func WaitFor(ctx context.Context, timeout, interval time.Duration, cond func() (bool, string)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, seen := cond()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waited %v: %w; last seen:\n%s", timeout, ctx.Err(), seen)
		case <-t.C:
		}
	}
}
