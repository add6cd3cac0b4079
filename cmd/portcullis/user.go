package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/term"

	"portcullis/core"
	"portcullis/core/store"
	"portcullis/internal/devmode"
)

// user runs `portcullis user add|list|disable|enable|delete|passwd`.
func user(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	verb := args[0]
	fs := flag.NewFlagSet("portcullis user "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFile := fs.String("config", "", "core configuration (its store section)")
	data := fs.String("data", "", "dev data folder")
	pwFile := fs.String("password-file", "", "read the password from this file (first line) instead of a prompt")
	positional, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return 2
	}
	needAOR := verb != "list"
	if (*cfgFile == "") == (*data == "") || (needAOR && len(positional) != 1) || (!needAOR && len(positional) != 0) {
		fmt.Fprintf(stderr, "portcullis user %s: give one of --config or --data%s\n", verb, map[bool]string{true: ", and one sip:user@domain", false: ""}[needAOR])
		return 2
	}
	st, code := openStore(ctx, "portcullis user", *cfgFile, *data, stderr)
	if st == nil {
		return code
	}
	defer st.Close()
	aor := ""
	if len(positional) > 0 {
		aor = positional[0]
	}
	switch verb {
	case "add", "passwd":
		var pw string
		if pw, err = password(*pwFile, stdin, stderr); err == nil {
			if verb == "add" {
				err = core.AddUser(ctx, st, aor, pw)
			} else {
				err = core.SetPassword(ctx, st, aor, pw)
			}
		}
	case "disable", "enable":
		err = st.SetDisabled(ctx, aor, verb == "disable")
	case "delete":
		err = st.DeleteUser(ctx, aor)
	case "list":
		users, lerr := st.Users(ctx)
		for _, u := range users {
			state := "enabled"
			if u.Disabled {
				state = "disabled"
			}
			fmt.Fprintf(stdout, "%s\t%s\tsince %s\n", u.AOR, state, u.Created.Format("2006-01-02"))
		}
		err = lerr
	default:
		fmt.Fprintf(stderr, "portcullis user: unknown command %q\n\n%s", verb, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "portcullis user %s: %v\n", verb, err)
		if errors.Is(err, core.ErrBadAOR) {
			return 2
		}
		return 1
	}
	if verb != "list" {
		fmt.Fprintf(stdout, "%s: %s done\n", aor, verb)
	}
	return 0
}

// openStore opens the store of --config or --data for an operator command
// (shared: the core may be running); on failure it reports and returns the
// exit code.
func openStore(ctx context.Context, cmd, cfgFile, data string, stderr io.Writer) (*store.Store, int) {
	sc, err := storeConfig(cfgFile, data)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, 2
	}
	st, err := store.OpenShared(ctx, sc)
	if err != nil {
		fmt.Fprintln(stderr, cmd+":", err)
		return nil, 1
	}
	return st, 0
}

func storeConfig(cfgFile, data string) (store.Config, error) {
	if cfgFile != "" {
		c, err := core.LoadConfig(cfgFile)
		return c.Store, err
	}
	dir, err := filepath.Abs(data)
	if err != nil {
		return store.Config{}, err
	}
	c, err := devmode.LoadConfig("", dir)
	return c.Core.Store, err
}

// password reads it from a file, or prompts without echo on a terminal
// (twice), or reads one line from a non-terminal stdin.
func password(file string, stdin io.Reader, stderr io.Writer) (string, error) {
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		line, _, _ := strings.Cut(string(data), "\n")
		return strings.TrimRight(line, "\r"), nil
	}
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(stderr, "again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", errors.New("the passwords differ")
		}
		return string(a), nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && line == "" {
		return "", errors.New("no password on standard input")
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// parseInterspersed parses flags that may come before or after positional
// arguments (`user add sip:a@b --config F`), returning the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
