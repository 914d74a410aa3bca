package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/subnet"
)

// runConfig is `weftctl config get|set|validate`.
//
//	get       prints the config in etcd, with defaults filled in
//	set       validates a config (from -f FILE, an argument, or stdin) and writes it
//	validate  checks a config from -f, an argument or stdin; with none, the one in etcd
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
		cfg, err := reg.GetConfig(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", cfg.JSON())
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
		if err := reg.SetConfig(ctx, cfg); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "set %s/config: %s\n", ef.prefix, cfg.JSON())
		return nil
	}
	fmt.Fprintf(stderr, "weftctl config: unknown verb %q: want get, set or validate\n", verb)
	return errUsage
}
