package quicsrv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/qbackup/qbackup/certs"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/store"
)

// Config is what qbackupd's flags and environment fill in.
type Config struct {
	Data              string          // data directory: database, files, TLS key
	Listen            string          // UDP host:port
	ChunkSize         int             // 0: DefaultChunkSize
	Streams           int             // 0: DefaultStreams
	Congestion        quic.Congestion // see Server
	ShutdownTimeout   time.Duration   // how long a shutdown waits for transfers
	PartialTTL        time.Duration   // unfinished uploads idle this long are removed (0: 7 days)
	MaxFileSize       int64           // largest file accepted, bytes (0: proto.MaxFileSize); see Server
	QuotaBytes        int64           // bytes stored per client (0: unlimited); see Server
	QuotaFiles        int             // file versions stored per client (0: unlimited); see Server
	Registration      store.Admission
	MaxConns          int           // see Server
	MaxConnsPerClient int           // see Server
	MemoryBudget      int64         // see Server
	ClientMemory      int64         // see Server
	MaxHandshakes     int           // see Server
	MaxHandshakesIP   int           // see Server.MaxHandshakesPerAddr
	IdleSession       time.Duration // see Server
	TransferTimeout   time.Duration // see Server
	MaxOpenFiles      int           // see Server (0: from the open-file limit)
	MaxClientFiles    int           // see Server.MaxOpenFilesPerClient (0: a quarter of MaxOpenFiles)
	ScrubEvery        time.Duration // see Server (0: no scrub)
	ScrubRate         int64         // see Server
	Logger            *slog.Logger
}

// DefaultPartialTTL is how long an unfinished upload is kept for resume
// after its last activity.
const DefaultPartialTTL = 7 * 24 * time.Hour

// purgePartials removes unfinished uploads idle for longer than ttl.
func purgePartials(ctx context.Context, st *store.Store, ttl time.Duration, log *slog.Logger) error {
	n, err := st.PurgeUploads(ctx, time.Now().Add(-ttl))
	if err != nil {
		return err
	}
	if n > 0 {
		log.Info("removed partial uploads past their time to live", "count", n, "ttl", ttl.String())
	}
	return nil
}

// Run opens the data directory (creating the database and a self-signed
// certificate on first start), serves on cfg.Listen until ctx ends, then
// shuts down gracefully.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	st, err := store.Open(ctx, cfg.Data)
	if err != nil {
		return err
	}
	defer st.Close()
	if rec := st.Recovered(); rec != (store.Recovery{}) {
		log.Warn("cleaned up after an unclean stop", "temp_files", rec.TempFiles, "upload_rows", rec.UploadRows, "orphan_files", rec.OrphanFiles)
	}
	ttl := cfg.PartialTTL
	if ttl <= 0 {
		ttl = DefaultPartialTTL
	}
	if err := purgePartials(ctx, st, ttl, log); err != nil {
		return err
	}
	if n, size, err := st.PartialUploads(ctx); err == nil && n > 0 {
		log.Info("partial uploads kept for resume", "count", n, "bytes", size, "ttl", ttl.String())
	}
	cert, err := certs.LoadOrCreate(filepath.Join(cfg.Data, "tls"))
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("quicsrv: listen on %s: %w", cfg.Listen, err)
	}
	srv := &Server{
		Store:      st,
		TLSConfig:  certs.ServerConfig(cert),
		Logger:     log,
		ChunkSize:  cfg.ChunkSize,
		Streams:    cfg.Streams,
		Congestion: cfg.Congestion,

		MaxFileSize: cfg.MaxFileSize,
		QuotaBytes:  cfg.QuotaBytes,
		QuotaFiles:  cfg.QuotaFiles,

		Registration:      cfg.Registration,
		MaxConns:          cfg.MaxConns,
		MaxConnsPerClient: cfg.MaxConnsPerClient,
		MemoryBudget:      cfg.MemoryBudget,
		ClientMemory:      cfg.ClientMemory,
		TransferTimeout:   cfg.TransferTimeout,

		MaxHandshakes:         cfg.MaxHandshakes,
		MaxHandshakesPerAddr:  cfg.MaxHandshakesIP,
		IdleSession:           cfg.IdleSession,
		MaxOpenFiles:          cfg.MaxOpenFiles,
		MaxOpenFilesPerClient: cfg.MaxClientFiles,

		ScrubEvery: cfg.ScrubEvery,
		ScrubRate:  cfg.ScrubRate,
	}
	log.Info("qbackupd listening", "addr", pc.LocalAddr().String(), "fingerprint", certs.Fingerprint(cert.Certificate[0]), "data", cfg.Data)
	switch cfg.Registration {
	case store.AdmitAll:
		log.Warn("registration is open: anyone who reaches this server can register and store files; use --registration=token on a public address")
	case store.AdmitInvited:
		log.Info("registration by invite: make one with 'qbackupd invite --data " + cfg.Data + "'")
	default:
		log.Info("registration is closed: only registered clients are served")
	}
	logOpenFiles(log, srv)
	if srv.ScrubEvery > 0 {
		log.Info("scrub on: each stored file is read again about once per period", "every", srv.ScrubEvery.String(), "rate", formatBytes(uint64(srv.scrubRate()))+"/s")
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(pc) }()
	purge := time.NewTicker(min(ttl, time.Hour))
	defer purge.Stop()
wait:
	for {
		select {
		case err := <-errc:
			return err
		case <-purge.C:
			if err := purgePartials(ctx, st, ttl, log); err != nil {
				log.Warn("purging partial uploads", "err", err)
			}
		case <-ctx.Done():
			break wait
		}
	}
	timeout := cfg.ShutdownTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	log.Info("shutting down", "grace", timeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown grace period over; closed remaining connections")
	}
	if err := <-errc; err != nil && !errors.Is(err, ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}
