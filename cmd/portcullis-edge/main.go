// Command portcullis-edge runs the edge server in the DMZ.
package main

import (
	"context"
	"os"
	"time"

	"portcullis/edge"
	"portcullis/internal/lifecycle"
	"portcullis/internal/sipnode"
)

func main() {
	p := lifecycle.Program[edge.Config]{
		Name:         "portcullis-edge",
		Load:         edge.LoadConfig,
		Preflight:    edge.Preflight,
		Level:        func(c edge.Config) string { return c.Log.Level },
		DrainTimeout: func(c edge.Config) time.Duration { return c.Shutdown.DrainTimeout },
		Wire:         sipnode.RouteLibraryLogs,
		Start: func(_ context.Context, c edge.Config, d lifecycle.Deps) (lifecycle.Reloadable[edge.Config], error) {
			return edge.Start(c, d)
		},
	}
	os.Exit(p.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
