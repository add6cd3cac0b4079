package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"portcullis/internal/devmode"
	"portcullis/internal/sipclient"
)

// client runs `portcullis client register|im|listen`.
func client(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	verb := args[0]
	fs := flag.NewFlagSet("portcullis client "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := connectionFlags(fs)
	to := fs.String("to", "", "recipient of an IM (im)")
	positional, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return 2
	}
	c, o, err := cf.connect()
	if err != nil {
		fmt.Fprintln(stderr, "portcullis client:", err)
		return 2
	}
	defer c.Close()
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	switch verb {
	case "register":
		res, err := c.Register(rctx, "sip:"+strings.TrimPrefix(strings.Split(o.AOR, "@")[0], "sip:")+"@"+o.Server+";transport=tls", 10*time.Minute)
		if err != nil {
			fmt.Fprintln(stderr, "portcullis client register:", err)
			return 1
		}
		fmt.Fprintf(stdout, "registered %s: %d %s\n", o.AOR, res.StatusCode, res.Reason)
		for _, h := range res.GetHeaders("Contact") {
			fmt.Fprintf(stdout, "  binding %s\n", h.Value())
		}
	case "im":
		if *to == "" || len(positional) != 1 {
			fmt.Fprintln(stderr, `portcullis client im: give --to sip:user@domain and one "text"`)
			return 2
		}
		res, err := c.Message(rctx, *to, positional[0])
		if err != nil {
			fmt.Fprintln(stderr, "portcullis client im:", err)
			return 1
		}
		fmt.Fprintf(stdout, "delivered to %s: %d %s\n", *to, res.StatusCode, res.Reason)
	case "listen":
		lctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		fmt.Fprintf(stdout, "listening as %s (interrupt to stop)\n", o.AOR)
		err := c.Listen(lctx, func(im sipclient.IM) { fmt.Fprintf(stdout, "%s: %s\n", im.From, im.Text) })
		if err != nil {
			fmt.Fprintln(stderr, "portcullis client listen:", err)
			return 1
		}
	default:
		fmt.Fprintf(stderr, "portcullis client: unknown command %q\n\n%s", verb, usage)
		return 2
	}
	return 0
}

// connFlags are the connection flags `client` and `join` share.
type connFlags struct {
	o        sipclient.Options
	pwFile   *string
	data     *string
	internal *bool
}

func connectionFlags(fs *flag.FlagSet) *connFlags {
	c := &connFlags{}
	fs.StringVar(&c.o.Server, "server", "", "the edge's SIP TLS address, host:port")
	fs.StringVar(&c.o.ServerName, "server-name", "", "name in the server's certificate (default: the host of --server)")
	fs.StringVar(&c.o.CAFile, "ca", "", "CA file that signed the server's certificate")
	fs.StringVar(&c.o.AOR, "user", "", "sip:user@domain")
	c.pwFile = fs.String("password-file", "", "file holding the password (first line)")
	c.data = fs.String("data", "", "dev data folder: server, CA and the user's password from it")
	c.internal = fs.Bool("internal", false, "with --data: connect to the core's users listener, as an internal user")
	return c
}

// connect connects a client with the options the flags give, and returns
// them too.
func (c *connFlags) connect() (*sipclient.Client, sipclient.Options, error) {
	o, err := c.options()
	if err != nil {
		return nil, o, err
	}
	cl, err := sipclient.New(o)
	return cl, o, err
}

// options completes the options from dev mode and the password file, and
// checks that nothing is missing.
func (c *connFlags) options() (sipclient.Options, error) {
	o := c.o
	if *c.data != "" {
		if err := devClientOptions(*c.data, *c.internal, &o); err != nil {
			return o, err
		}
	}
	if *c.pwFile != "" {
		pw, err := password(*c.pwFile, nil, io.Discard)
		if err != nil {
			return o, err
		}
		o.Password = pw
	}
	if o.Server == "" || o.CAFile == "" || o.AOR == "" || o.Password == "" {
		return o, fmt.Errorf("give --server, --ca, --user and --password-file (or --data DIR in dev mode)")
	}
	return o, nil
}

// devClientOptions fills in what dev mode knows: the edge (or the core's
// users listener), the CA, and the user's password from dev-users.txt.
func devClientOptions(dir string, internal bool, o *sipclient.Options) error {
	ep, err := devmode.ReadEndpoints(dir)
	if err != nil {
		return err
	}
	want, name := "sip-tls-external", "edge.dev.internal"
	if internal {
		want, name = "sip-tls-users", "core.dev.internal"
	}
	for _, l := range ep.Listeners {
		if l.Protocol == want && o.Server == "" {
			o.Server = l.Address
		}
	}
	if o.ServerName == "" {
		o.ServerName = name
	}
	if o.CAFile == "" {
		o.CAFile = ep.CAFile
	}
	if o.Password == "" && o.AOR != "" {
		o.Password, err = devmode.UserPassword(dir, o.AOR)
	}
	return err
}
