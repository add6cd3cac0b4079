package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"portcullis/core/c3p"
	"portcullis/core/confinfo"
	"portcullis/internal/sipclient"
)

// join runs `portcullis join <conference URI>`: it joins a meeting, prints
// the roster as it changes and the group IM, and takes typed lines as IM
// and /commands as C3P. End of input leaves the meeting.
func join(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("portcullis join", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := connectionFlags(fs)
	anonymous := fs.Bool("anonymous", false, "join as an anonymous guest (with --name and --key)")
	name := fs.String("name", "", "a guest's display name")
	key := fs.String("key", "", "the conference key (anonymous join)")
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(positional) != 1 {
		fmt.Fprintln(stderr, "portcullis join: give one conference URI")
		return 2
	}
	if *anonymous {
		if *name == "" || *key == "" {
			fmt.Fprintln(stderr, "portcullis join: --anonymous needs --name and --key")
			return 2
		}
		cf.o.AOR, cf.o.Password, cf.o.DisplayName = guestAOR(*name), *key, *name
	}
	c, o, err := cf.connect()
	if err != nil {
		fmt.Fprintln(stderr, "portcullis join:", err)
		return 2
	}
	defer c.Close()
	jctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	conf, err := c.Join(jctx, positional[0])
	cancel()
	if err != nil {
		fmt.Fprintln(stderr, "portcullis join:", err)
		return 1
	}
	fmt.Fprintf(stdout, "joined %s as %s\n", positional[0], o.AOR)
	sctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var shown confinfo.Roster
	for {
		select {
		case ev, open := <-conf.Events():
			if !open {
				return 0
			}
			switch {
			case ev.Roster != nil:
				printRosterChange(stdout, shown, *ev.Roster)
				shown = *ev.Roster
			case ev.IM != nil:
				fmt.Fprintf(stdout, "%s: %s\n", ev.IM.From, ev.IM.Text)
			case ev.C3P != nil:
				fmt.Fprintf(stdout, "* %s %s %s\n", ev.C3P.Result.XMLName.Local, ev.C3P.Code, ev.C3P.Reason)
			case ev.Ended != "":
				fmt.Fprintf(stdout, "* %s\n", ev.Ended)
			}
		case line, open := <-lines:
			if !open {
				lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				conf.Leave(lctx)
				cancel()
				return 0
			}
			if err := typed(sctx, conf, line, stdout); err != nil {
				fmt.Fprintln(stderr, "portcullis join:", err)
			}
		case <-sctx.Done():
			lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			conf.Leave(lctx)
			cancel()
			return 0
		}
	}
}

var nameRE = regexp.MustCompile(`[^a-z0-9]+`)

// guestAOR is an anonymous guest's address: their name and a random suffix.
func guestAOR(name string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	slug := strings.Trim(nameRE.ReplaceAllString(strings.ToLower(name), "-"), "-")
	if slug == "" {
		slug = "guest"
	}
	return "sip:" + slug + "-" + hex.EncodeToString(b) + "@anonymous.invalid"
}

// typed sends a line: /lock, /unlock, /eject U, /promote U, /demote U,
// /admit U, /deny U, /roster, or else an IM.
func typed(ctx context.Context, conf *sipclient.Conference, line string, stdout io.Writer) error {
	line = strings.TrimSpace(line)
	if line == "" {
		return nil
	}
	if !strings.HasPrefix(line, "/") {
		ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return conf.IM(ictx, line)
	}
	f := strings.Fields(line)
	arg := ""
	if len(f) > 1 {
		arg = f[1]
		if !strings.HasPrefix(arg, "sip:") {
			arg = "sip:" + arg
		}
	}
	var cmd c3p.Command
	yes, no := true, false
	switch f[0] {
	case "/lock", "/unlock":
		cmd = c3p.Cmd("modifyConferenceLock")
		cmd.Locked = map[bool]*bool{true: &yes, false: &no}[f[0] == "/lock"]
	case "/eject":
		cmd = c3p.Cmd("deleteUser")
		cmd.User = &c3p.User{Entity: arg}
	case "/promote", "/demote":
		cmd = c3p.Cmd("modifyUserRoles")
		cmd.User = &c3p.User{Entity: arg, Roles: []string{map[bool]string{true: "presenter", false: "attendee"}[f[0] == "/promote"]}}
	case "/admit", "/deny":
		cmd = c3p.Cmd("setUserAccess")
		cmd.User, cmd.Access = &c3p.User{Entity: arg}, strings.TrimPrefix(f[0], "/")
	case "/roster":
		printRoster(stdout, conf.Roster())
		return nil
	default:
		return fmt.Errorf("unknown command %s (/lock, /unlock, /eject U, /promote U, /demote U, /admit U, /deny U, /roster)", f[0])
	}
	if cmd.User != nil && arg == "" {
		return fmt.Errorf("%s needs a user", f[0])
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := conf.Command(cctx, cmd)
	if err != nil {
		return err
	}
	if res.Code == c3p.Failure {
		text := ""
		if res.Result != nil {
			text = res.Result.ErrorText
		}
		return fmt.Errorf("%s refused: %s (%s)", f[0], res.Reason, text)
	}
	fmt.Fprintf(stdout, "* %s: %s\n", f[0], res.Code)
	return nil
}

func describe(u confinfo.User) string {
	role, status := "", ""
	if len(u.Roles) > 0 {
		role = u.Roles[0]
	}
	if len(u.Endpoints) > 0 {
		status = u.Endpoints[0].Status
	}
	s := u.Entity + " (" + role
	if status != confinfo.Connected && status != "" {
		s += ", " + status
	}
	if u.DisplayText != "" && !strings.Contains(u.Entity, u.DisplayText) {
		s += `, "` + u.DisplayText + `"`
	}
	return s + ")"
}

// printRosterChange prints what differs between two rosters.
func printRosterChange(w io.Writer, old, now confinfo.Roster) {
	var entities []string
	for e := range now.Users {
		entities = append(entities, e)
	}
	for e := range old.Users {
		if _, ok := now.Users[e]; !ok {
			entities = append(entities, e)
		}
	}
	slices.Sort(entities)
	for _, e := range entities {
		o, was := old.Users[e]
		n, is := now.Users[e]
		switch {
		case !was && is:
			fmt.Fprintf(w, "+ %s\n", describe(n))
		case was && !is:
			fmt.Fprintf(w, "- %s\n", e)
		case describe(o) != describe(n):
			fmt.Fprintf(w, "~ %s\n", describe(n))
		}
	}
	if old.Locked != now.Locked {
		fmt.Fprintf(w, "* %s\n", map[bool]string{true: "locked", false: "unlocked"}[now.Locked])
	}
}

func printRoster(w io.Writer, r confinfo.Roster) {
	printRosterChange(w, confinfo.Roster{}, r)
}
