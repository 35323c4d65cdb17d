// Command qbackup is the qbackup client: it registers with a qbackupd
// server, backs files up, lists and restores them. See quiccli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/qbackup/qbackup/quiccli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := quiccli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
