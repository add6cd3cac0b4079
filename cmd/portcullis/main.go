// Command portcullis is the operator and developer CLI: dev mode and the
// private CA.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"portcullis/access"
	"portcullis/internal/config"
	"portcullis/internal/devmode"
	"portcullis/internal/lifecycle"
	"portcullis/internal/sipnode"
)

const usage = `usage: portcullis <command> [flags]

commands:
  dev [--data DIR] [--config FILE]     run core and edge on loopback (default DIR ./var/dev)
  demo [--data DIR] [--verbose]        a scripted meeting in dev mode: organiser inside, two
                                       remote users through the edge, an anonymous guest
  pki init --dir DIR                   create a private CA (ECDSA P-256) in DIR
  pki issue --dir DIR --name NAME [--san S]... [--server] [--client] [--days N]
                                       issue a certificate signed by the CA in DIR
                                       (server usage unless --client; both flags: both)
  turn-cred (--secret-file F | --data DIR) --user U [--ttl 8h]
                                       print a TURN REST username and password
  turn-cred --new-secret F             create a TURN shared secret file (0600)
  user add|passwd sip:u@d (--config core.yaml | --data DIR) [--password-file F]
  user disable|enable|delete sip:u@d (--config core.yaml | --data DIR)
  user list (--config core.yaml | --data DIR)
  client register|listen --user sip:u@d (--server H:P --ca F --password-file F | --data DIR [--internal])
  client im --user sip:u@d --to sip:v@d "text" (...same connection flags)
  meeting create --organizer sip:u@d [--admission closed|open|anonymous] [--lobby]
                 [--expires 2026-12-31] [--subject S] (--config core.yaml | --data DIR)
  meeting list [--organizer sip:u@d] (--config core.yaml | --data DIR)
  meeting delete <conference URI or ID> (--config core.yaml | --data DIR)
  join <conference URI> --user sip:u@d (...client connection flags)
  join <conference URI> --anonymous --name "Guest" --key K (--server H:P --ca F | --data DIR)
                                       join a meeting: prints the roster and group IM; typed
                                       lines are IM, /lock /unlock /eject U /promote U /admit U
                                       /deny U are C3P commands; end of input leaves

Run 'portcullis <command> -h' for a command's flags.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "dev":
		return dev(ctx, args[1:], stderr)
	case "pki":
		if len(args) < 2 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		switch args[1] {
		case "init":
			return pkiInit(args[2:], stdout, stderr)
		case "issue":
			return pkiIssue(args[2:], stdout, stderr)
		}
	case "turn-cred":
		return turnCred(args[1:], stdout, stderr)
	case "user":
		return user(ctx, args[1:], os.Stdin, stdout, stderr)
	case "client":
		return client(ctx, args[1:], stdout, stderr)
	case "meeting":
		return meeting(ctx, args[1:], stdout, stderr)
	case "join":
		return join(ctx, args[1:], os.Stdin, stdout, stderr)
	case "demo":
		return demo(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "portcullis: unknown command %q\n\n%s", strings.Join(args[:min(2, len(args))], " "), usage)
	return 2
}

func dev(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("portcullis dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "var/dev", "data folder: PKI, store, endpoints.json")
	file := fs.String("config", "", "dev configuration (default: the built-in configs/dev.yaml)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := new(slog.LevelVar)
	log := lifecycle.NewLogger(stderr, level).With("service", "portcullis dev")
	sipnode.RouteLibraryLogs(log)
	err := devmode.Run(ctx, devmode.Options{DataDir: *data, ConfigFile: *file, Log: log, Level: level})
	switch {
	case err == nil:
		return 0
	case errors.Is(err, config.ErrInvalid):
		fmt.Fprintln(stderr, err)
		return 2
	default:
		fmt.Fprintln(stderr, "portcullis dev:", err)
		return 1
	}
}

func pkiInit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("portcullis pki init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "folder for ca.crt and ca.key (required)")
	cn := fs.String("cn", "Portcullis internal CA", "CA common name")
	days := fs.Int("days", 3650, "validity in days")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || *days <= 0 {
		fmt.Fprintln(stderr, "portcullis pki init: --dir is required and --days must be positive")
		return 2
	}
	ca, err := access.InitCA(*dir, *cn, time.Duration(*days)*24*time.Hour)
	if err != nil {
		fmt.Fprintln(stderr, "portcullis pki init:", err)
		return 1
	}
	fmt.Fprintf(stdout, "CA created: %s/%s (key %s/%s, mode 0600), valid until %s\n",
		*dir, access.CACertFile, *dir, access.CAKeyFile, ca.Cert.NotAfter.Format(time.DateOnly))
	return 0
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func pkiIssue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("portcullis pki issue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "folder holding the CA; the certificate and key are written there (required)")
	name := fs.String("name", "", "certificate name: common name and file name (required)")
	var sans multi
	fs.Var(&sans, "san", "subject alternative name, DNS name or IP address (repeatable)")
	server := fs.Bool("server", false, "server usage (the default when --client is not given)")
	client := fs.Bool("client", false, "client usage (for mutual TLS)")
	days := fs.Int("days", 397, "validity in days")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || *name == "" || *days <= 0 {
		fmt.Fprintln(stderr, "portcullis pki issue: --dir and --name are required and --days must be positive")
		return 2
	}
	usage := access.UsageServer
	if *client {
		usage = access.UsageClient
		if *server {
			usage |= access.UsageServer
		}
	}
	if len(sans) == 0 {
		sans = multi{*name}
	}
	ca, err := access.LoadCA(*dir)
	if err != nil {
		fmt.Fprintln(stderr, "portcullis pki issue:", err)
		return 1
	}
	certPath, keyPath, err := ca.Issue(access.IssueRequest{Name: *name, SANs: sans, Usage: usage, Validity: time.Duration(*days) * 24 * time.Hour})
	if err != nil {
		fmt.Fprintln(stderr, "portcullis pki issue:", err)
		return 1
	}
	fmt.Fprintf(stdout, "issued %s (key %s, mode 0600) for %s\n", certPath, keyPath, sans.String())
	return 0
}

func turnCred(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("portcullis turn-cred", flag.ContinueOnError)
	fs.SetOutput(stderr)
	secretFile := fs.String("secret-file", "", "shared secret file (the relay's turn.secret_file)")
	data := fs.String("data", "", "dev data folder: use its TURN secret")
	user := fs.String("user", "", "user the credential is for")
	ttl := fs.Duration("ttl", 8*time.Hour, "validity")
	newSecret := fs.String("new-secret", "", "create a new secret file and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *newSecret != "" {
		if err := access.NewTURNSecret(*newSecret); err != nil {
			fmt.Fprintln(stderr, "portcullis turn-cred:", err)
			return 1
		}
		fmt.Fprintf(stdout, "secret written to %s (mode 0600)\n", *newSecret)
		return 0
	}
	if (*secretFile == "") == (*data == "") || *user == "" || *ttl <= 0 {
		fmt.Fprintln(stderr, "portcullis turn-cred: give --user and one of --secret-file or --data; --ttl must be positive")
		return 2
	}
	file := *secretFile
	if *data != "" {
		dir, err := filepath.Abs(*data)
		if err == nil {
			file, err = devmode.SecretFile(dir)
		}
		if err != nil {
			fmt.Fprintln(stderr, "portcullis turn-cred:", err)
			return 1
		}
	}
	secret, err := access.LoadTURNSecret(file)
	if err != nil {
		fmt.Fprintln(stderr, "portcullis turn-cred:", err)
		return 1
	}
	c := access.IssueTURN(secret, *user, *ttl, time.Now())
	fmt.Fprintf(stdout, "username %s\npassword %s\nexpires %s\n", c.Username, c.Password, c.Expires.UTC().Format(time.RFC3339))
	return 0
}
