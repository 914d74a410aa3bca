package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/subnet"
)

// runConfig is `weftctl config get|set|validate`.
//
//	get       prints the config in etcd, with defaults filled in, and its
//	          revision on stderr
//	set       validates a config (from -f FILE, an argument, or stdin) and writes it
//	validate  checks a config from -f, an argument or stdin; with none, the one in etcd
//
// set never overwrites blindly. It reads the config key and writes with a
// compare-and-swap on the mod revision it read, so a change made between its
// read and its write is never lost. Writing the first config, or one equal to
// the one in etcd, needs nothing more. Replacing a different config needs
// either --if-revision N, N being the revision `config get` showed (the
// config the operator looked at is the one replaced, or nothing is written),
// or --force (replace whatever is there).
func runConfig(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: weftctl config get|set|validate [-f FILE | JSON] [flags]")
		return errUsage
	}
	verb := args[0]
	fs := pflag.NewFlagSet("weftctl config "+verb, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var ef etcdFlags
	ef.register(fs)
	file := fs.StringP("file", "f", "", "read the config from this file (- for stdin)")
	ifRev := fs.Int64("if-revision", 0, "set: replace the config only if it is still at this revision (from config get)")
	force := fs.Bool("force", false, "set: replace the config whatever it is now")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	readInput := func() ([]byte, bool, error) {
		switch {
		case *file == "-":
			b, err := io.ReadAll(stdin)
			return b, true, err
		case *file != "":
			b, err := os.ReadFile(*file)
			return b, true, err
		case fs.NArg() > 0:
			return []byte(fs.Arg(0)), true, nil
		}
		return nil, false, nil
	}

	switch verb {
	case "validate":
		raw, given, err := readInput()
		if err != nil {
			return err
		}
		if !given {
			reg, cli, err := ef.registry(log)
			if err != nil {
				return err
			}
			defer cli.Close()
			cfg, err := reg.GetConfig(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "valid: %s\n", cfg.JSON())
			return nil
		}
		cfg, err := subnet.ParseConfig(raw)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "valid: %s\n", cfg.JSON())
		return nil

	case "get":
		reg, cli, err := ef.registry(log)
		if err != nil {
			return err
		}
		defer cli.Close()
		cfg, rev, err := reg.ReadConfig(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", cfg.JSON())
		fmt.Fprintf(stderr, "revision %d (weftctl config set --if-revision %d replaces exactly this config)\n", rev, rev)
		return nil

	case "set":
		raw, given, err := readInput()
		if err != nil {
			return err
		}
		if !given {
			if raw, err = io.ReadAll(stdin); err != nil {
				return err
			}
		}
		cfg, err := subnet.ParseConfig(raw)
		if err != nil {
			return err
		}
		reg, cli, err := ef.registry(log)
		if err != nil {
			return err
		}
		defer cli.Close()
		return setConfig(ctx, reg, cfg, *ifRev, *force, ef.prefix+"/config", stdout)
	}
	fmt.Fprintf(stderr, "weftctl config: unknown verb %q: want get, set or validate\n", verb)
	return errUsage
}

// setConfig writes cfg with a compare-and-swap against the config key as
// read here; see runConfig for when it refuses.
func setConfig(ctx context.Context, reg *subnet.Registry, cfg subnet.Config, ifRev int64, force bool, key string, stdout io.Writer) error {
	raw, rev, err := reg.RawConfig(ctx)
	if err != nil {
		return err
	}
	cur, curErr := subnet.ParseConfig(raw)
	switch {
	case rev == 0, force:
	case ifRev != 0 && ifRev != rev:
		return fmt.Errorf("%s is at revision %d, not %d: it changed since you read it; nothing written (weftctl config get shows it)", key, rev, ifRev)
	case curErr == nil && cur == cfg:
		fmt.Fprintf(stdout, "unchanged %s (revision %d): %s\n", key, rev, cfg.JSON())
		return nil
	case ifRev == 0:
		return fmt.Errorf("%s (revision %d) holds a different config: %s; nothing written: check it with weftctl config get, then give --if-revision %d, or --force",
			key, rev, clipBytes(raw), rev)
	}
	var newRev int64
	if force {
		if err := reg.SetConfig(ctx, cfg); err != nil {
			return err
		}
	} else if newRev, err = reg.PutConfig(ctx, cfg, rev); err != nil {
		if errors.Is(err, subnet.ErrConfigChanged) {
			return fmt.Errorf("%s changed while this was being written; nothing written, run again: %w", key, err)
		}
		return err
	}
	if newRev != 0 {
		fmt.Fprintf(stdout, "set %s (revision %d): %s\n", key, newRev, cfg.JSON())
	} else {
		fmt.Fprintf(stdout, "set %s: %s\n", key, cfg.JSON())
	}
	if rev != 0 && curErr == nil {
		if ok, why := subnet.LiveChange(cur, cfg); !ok {
			fmt.Fprintf(stdout, "note: running weftd nodes apply this only after a restart (%s)\n", why)
		}
	}
	return nil
}

// clipBytes shows a stored value for an error message: quoted, and cut if long.
func clipBytes(b []byte) string {
	const most = 200
	if len(b) > most {
		return fmt.Sprintf("%q...(%d bytes)", b[:most], len(b))
	}
	return fmt.Sprintf("%q", b)
}
