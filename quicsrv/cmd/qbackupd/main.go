// Command qbackupd is the qbackup server. See quicsrv.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/qbackup/qbackup/quicsrv"
)

type flags struct {
	Data        string        `required:"" env:"QBACKUPD_DATA" help:"Data directory: database, stored files, TLS key." placeholder:"DIR"`
	Listen      string        `default:"0.0.0.0:7443" env:"QBACKUPD_LISTEN" help:"UDP address to listen on." placeholder:"HOST:PORT"`
	ChunkSize   int           `default:"1048576" help:"Largest chunk accepted and sent, in bytes."`
	Streams     int           `default:"8" help:"Data streams a client may open at once."`
	Grace       time.Duration `default:"30s" help:"How long a shutdown waits for transfers to finish."`
	PartialTTL  time.Duration `default:"168h" env:"QBACKUPD_PARTIAL_TTL" help:"Remove unfinished uploads idle for this long (they are kept for resume until then)."`
	MaxFileSize int64         `default:"0" env:"QBACKUPD_MAX_FILE_SIZE" help:"Largest file accepted, in bytes (0: no limit but the protocol's 1 PiB)." placeholder:"BYTES"`
	QuotaBytes  int64         `default:"0" env:"QBACKUPD_QUOTA_BYTES" help:"Bytes one client may store, all versions counted (0: unlimited)." placeholder:"BYTES"`
	QuotaFiles  int           `default:"0" env:"QBACKUPD_QUOTA_FILES" help:"File versions one client may store (0: unlimited)." placeholder:"N"`
	LogJSON     bool          `help:"Log as JSON lines."`
}

func main() {
	var f flags
	kctx := kong.Parse(&f, kong.Name("qbackupd"), kong.Description("The qbackup server: encrypted backup over QUIC."))
	if f.MaxFileSize < 0 || f.QuotaBytes < 0 || f.QuotaFiles < 0 {
		kctx.Fatalf("--max-file-size, --quota-bytes and --quota-files must not be negative")
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if f.LogJSON {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := quicsrv.Run(ctx, quicsrv.Config{
		Data:            f.Data,
		Listen:          f.Listen,
		ChunkSize:       f.ChunkSize,
		Streams:         f.Streams,
		ShutdownTimeout: f.Grace,
		PartialTTL:      f.PartialTTL,
		MaxFileSize:     f.MaxFileSize,
		QuotaBytes:      f.QuotaBytes,
		QuotaFiles:      f.QuotaFiles,
		Logger:          slog.New(h),
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "qbackupd: %v\n", err)
		os.Exit(1)
	}
}
