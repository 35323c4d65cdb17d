// Command qbackupd is the qbackup server. See quicsrv.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/qbackup/qbackup/quicsrv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := quicsrv.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
