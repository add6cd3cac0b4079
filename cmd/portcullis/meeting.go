package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"portcullis/core"
	"portcullis/core/store"
)

// meeting runs `portcullis meeting create|list|delete` on the store (the
// core may be running: the store is opened shared).
func meeting(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	verb := args[0]
	fs := flag.NewFlagSet("portcullis meeting "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFile := fs.String("config", "", "core configuration (its store section)")
	data := fs.String("data", "", "dev data folder")
	organizer := fs.String("organizer", "", "the organiser, sip:user@domain (create; a filter for list)")
	admission := fs.String("admission", core.AdmitClosed, "closed (home users), open (and federated users) or anonymous (and guests with the key)")
	lobby := fs.Bool("lobby", false, "joiners wait in a lobby until a presenter admits them")
	expires := fs.String("expires", "", "expiry: a date (2026-12-31) or RFC 3339")
	subject := fs.String("subject", "", "the meeting's subject")
	positional, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return 2
	}
	if (*cfgFile == "") == (*data == "") {
		fmt.Fprintf(stderr, "portcullis meeting %s: give one of --config or --data\n", verb)
		return 2
	}
	st, code := openStore(ctx, "portcullis meeting", *cfgFile, *data, stderr)
	if st == nil {
		return code
	}
	defer st.Close()
	f := core.NewFactory(st)
	switch verb {
	case "create":
		if *organizer == "" || len(positional) != 0 {
			fmt.Fprintln(stderr, "portcullis meeting create: give --organizer sip:user@domain")
			return 2
		}
		exp, err := core.ParseExpiry(*expires)
		if err != nil {
			fmt.Fprintln(stderr, "portcullis meeting create:", err)
			return 2
		}
		m, err := f.Create(ctx, core.MeetingOptions{Organizer: *organizer, Subject: *subject, Admission: *admission, Lobby: *lobby, Expires: exp})
		if err != nil {
			fmt.Fprintln(stderr, "portcullis meeting create:", err)
			if errors.Is(err, core.ErrBadMeeting) {
				return 2
			}
			return 1
		}
		printMeeting(stdout, m)
	case "list":
		ms, err := f.List(ctx, *organizer)
		if err != nil {
			fmt.Fprintln(stderr, "portcullis meeting list:", err)
			return 1
		}
		for _, m := range ms {
			printMeeting(stdout, m)
		}
	case "delete":
		id, ok := "", len(positional) == 1
		if ok {
			id, ok = core.MeetingID(positional[0])
		}
		if !ok {
			fmt.Fprintln(stderr, "portcullis meeting delete: give one conference URI or meeting ID")
			return 2
		}
		if err := f.Delete(ctx, id, ""); err != nil {
			fmt.Fprintln(stderr, "portcullis meeting delete:", err)
			return 1
		}
		fmt.Fprintf(stdout, "deleted %s\n", id)
	default:
		fmt.Fprintf(stderr, "portcullis meeting: unknown command %q\n\n%s", verb, usage)
		return 2
	}
	return 0
}

func printMeeting(w io.Writer, m store.Meeting) {
	exp := "never"
	if !m.Expires.IsZero() {
		exp = m.Expires.UTC().Format("2006-01-02 15:04 MST")
	}
	fmt.Fprintf(w, "%s\n  id %s  key %s  organizer %s  admission %s  lobby %v  locked %v  expires %s\n",
		core.ConferenceURI(m.Organizer, m.ID), m.ID, m.Key, m.Organizer, m.Admission, m.Lobby, m.Locked, exp)
	if m.Subject != "" {
		fmt.Fprintf(w, "  subject %q\n", m.Subject)
	}
}
