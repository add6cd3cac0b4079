// Command portcullis-core runs the core (Front End) on the internal network.
package main

import (
	"context"
	"os"
	"time"

	"portcullis/core"
	"portcullis/internal/lifecycle"
	"portcullis/internal/sipnode"
)

func main() {
	p := lifecycle.Program[core.Config]{
		Name:         "portcullis-core",
		Load:         core.LoadConfig,
		Preflight:    core.Preflight,
		Level:        func(c core.Config) string { return c.Log.Level },
		DrainTimeout: func(c core.Config) time.Duration { return c.Shutdown.DrainTimeout },
		Wire:         sipnode.RouteLibraryLogs,
		Start: func(ctx context.Context, c core.Config, d lifecycle.Deps) (lifecycle.Reloadable[core.Config], error) {
			return core.Start(ctx, c, d)
		},
	}
	os.Exit(p.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
