package quicsrv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kong"
	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/store"
)

// cli is qbackupd's command line: serving is the default command, so
// "qbackupd --data DIR" serves.
type cli struct {
	Serve  serveCmd  `cmd:"" default:"withargs" help:"Serve clients (the default command)."`
	Invite inviteCmd `cmd:"" help:"Make, list and revoke invites for registration."`
	Check  checkCmd  `cmd:"" help:"Read every stored file again and compare it with its checksums; mark damage (exit status 1 if any)."`
}

type serveCmd struct {
	Data            string        `required:"" env:"QBACKUPD_DATA" help:"Data directory: database, stored files, TLS key." placeholder:"DIR"`
	Listen          string        `default:"0.0.0.0:7443" env:"QBACKUPD_LISTEN" help:"UDP address to listen on." placeholder:"HOST:PORT"`
	Registration    string        `enum:"open,token,closed" default:"token" env:"QBACKUPD_REGISTRATION" help:"Who may register a new client: open (anyone who reaches the server), token (holders of an invite from 'qbackupd invite'), closed (nobody new). Registered clients are not affected."`
	ChunkSize       int           `default:"1048576" help:"Largest chunk accepted and sent, in bytes."`
	Streams         int           `default:"8" help:"Data streams a client may open at once."`
	CC              string        `name:"cc" enum:"bbr,reno" default:"bbr" env:"QBACKUPD_CC" help:"Congestion controller for what the server sends (restores): bbr keeps its rate under random loss and lets a client cap it (restore --limit); reno is the QUIC module's own, for comparison and as a fallback."`
	Grace           time.Duration `default:"30s" help:"How long a shutdown waits for transfers to finish."`
	PartialTTL      time.Duration `default:"168h" env:"QBACKUPD_PARTIAL_TTL" help:"Remove unfinished uploads idle for this long (they are kept for resume until then)."`
	MaxFileSize     int64         `default:"0" env:"QBACKUPD_MAX_FILE_SIZE" help:"Largest file accepted, in bytes (0: no limit but the protocol's 1 PiB)." placeholder:"BYTES"`
	QuotaBytes      int64         `default:"0" env:"QBACKUPD_QUOTA_BYTES" help:"Bytes one client may store, all versions and unfinished uploads counted (0: unlimited)." placeholder:"BYTES"`
	QuotaFiles      int           `default:"0" env:"QBACKUPD_QUOTA_FILES" help:"File versions one client may store (0: unlimited)." placeholder:"N"`
	MaxConns        int           `default:"1024" env:"QBACKUPD_MAX_CONNS" help:"Connections open at once, in total." placeholder:"N"`
	MaxClientConns  int           `default:"40" env:"QBACKUPD_MAX_CLIENT_CONNS" help:"Connections open at once for one client." placeholder:"N"`
	Memory          int64         `default:"536870912" env:"QBACKUPD_MEMORY" help:"Bytes all clients together can make the server buffer (receive windows and chunks in flight); the initial windows of --max-conns connections (256 KiB each) are set aside from it." placeholder:"BYTES"`
	ClientMemory    int64         `default:"0" env:"QBACKUPD_CLIENT_MEMORY" help:"Bytes of --memory one client's connections may take beyond their initial windows (0: a quarter of what those leave)." placeholder:"BYTES"`
	MaxHandshakes   int           `default:"${max_handshakes}" env:"QBACKUPD_MAX_HANDSHAKES" help:"Connections waiting to authenticate, in total; one more closes the oldest of them." placeholder:"N"`
	MaxHandshakesIP int           `name:"max-handshakes-per-addr" default:"${max_handshakes_ip}" env:"QBACKUPD_MAX_HANDSHAKES_PER_ADDR" help:"Connections waiting to authenticate from one IP address; one more closes the oldest of them." placeholder:"N"`
	IdleSession     time.Duration `default:"${idle_session}" env:"QBACKUPD_IDLE_SESSION" help:"Close a session whose client has had no request or transfer in any session for this long (negative: never)." placeholder:"DURATION"`
	TransferTimeout time.Duration `default:"5m" env:"QBACKUPD_TRANSFER_TIMEOUT" help:"End an upload that receives nothing for this long (it is kept for resume)."`
	MaxOpenFiles    int           `default:"0" env:"QBACKUPD_MAX_OPEN_FILES" help:"Files transfers may hold open at once, in total: uploads' temp files and restored files (0: the open-file limit less 512 and an eighth of it)." placeholder:"N"`
	MaxClientFiles  int           `name:"max-client-open-files" default:"0" env:"QBACKUPD_MAX_CLIENT_OPEN_FILES" help:"Files one client's transfers may hold open at once (0: a quarter of --max-open-files)." placeholder:"N"`
	ScrubEvery      time.Duration `default:"0s" env:"QBACKUPD_SCRUB_EVERY" help:"Read each stored file again about once per this period, in the background, and mark damage (0: never; 'qbackupd check' does it on demand)." placeholder:"DURATION"`
	ScrubRate       int64         `default:"${scrub_rate}" env:"QBACKUPD_SCRUB_RATE" help:"How fast the scrub reads, in bytes per second." placeholder:"BYTES"`
	LogLevel        string        `enum:"debug,info,warn,error" default:"info" env:"QBACKUPD_LOG_LEVEL" help:"Least severe log lines written: debug (adds a line per file), info, warn, error."`
	LogJSON         bool          `help:"Log as JSON lines."`
}

func (c *serveCmd) Run(e *cliEnv) error {
	if c.MaxFileSize < 0 || c.QuotaBytes < 0 || c.QuotaFiles < 0 {
		return errors.New("--max-file-size, --quota-bytes and --quota-files must not be negative")
	}
	if c.MaxConns <= 0 || c.MaxClientConns <= 0 || c.Memory <= 0 || c.TransferTimeout <= 0 || c.MaxHandshakes <= 0 || c.MaxHandshakesIP <= 0 {
		return errors.New("--max-conns, --max-client-conns, --memory, --transfer-timeout, --max-handshakes and --max-handshakes-per-addr must be positive")
	}
	if c.ClientMemory < 0 || c.IdleSession == 0 {
		return errors.New("--client-memory must not be negative and --idle-session not 0 (negative: never)")
	}
	if c.MaxOpenFiles < 0 || c.MaxClientFiles < 0 {
		return errors.New("--max-open-files and --max-client-open-files must not be negative (0: computed from the open-file limit)")
	}
	if c.ScrubEvery < 0 || c.ScrubRate <= 0 {
		return errors.New("--scrub-every must not be negative and --scrub-rate must be positive")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(e.stderr, opts)
	if c.LogJSON {
		h = slog.NewJSONHandler(e.stderr, opts)
	}
	return Run(e.ctx, Config{
		Data:              c.Data,
		Listen:            c.Listen,
		Registration:      admission(c.Registration),
		ChunkSize:         c.ChunkSize,
		Streams:           c.Streams,
		Congestion:        quic.Congestion(c.CC),
		ShutdownTimeout:   c.Grace,
		PartialTTL:        c.PartialTTL,
		MaxFileSize:       c.MaxFileSize,
		QuotaBytes:        c.QuotaBytes,
		QuotaFiles:        c.QuotaFiles,
		MaxConns:          c.MaxConns,
		MaxConnsPerClient: c.MaxClientConns,
		MemoryBudget:      c.Memory,
		ClientMemory:      c.ClientMemory,
		MaxHandshakes:     c.MaxHandshakes,
		MaxHandshakesIP:   c.MaxHandshakesIP,
		IdleSession:       c.IdleSession,
		TransferTimeout:   c.TransferTimeout,
		MaxOpenFiles:      c.MaxOpenFiles,
		MaxClientFiles:    c.MaxClientFiles,
		ScrubEvery:        c.ScrubEvery,
		ScrubRate:         c.ScrubRate,
		Logger:            slog.New(h),
	})
}

func admission(s string) store.Admission {
	switch s {
	case "open":
		return store.AdmitAll
	case "token":
		return store.AdmitInvited
	}
	return store.AdmitNone
}

type inviteCmd struct {
	New inviteNewCmd `cmd:"" default:"withargs" help:"Make an invite and print its token (the default)."`
	Ls  inviteLsCmd  `cmd:"" help:"List invites."`
	Rm  inviteRmCmd  `cmd:"" help:"Revoke an invite."`
}

type inviteNewCmd struct {
	Data string        `required:"" env:"QBACKUPD_DATA" help:"Data directory of the server." placeholder:"DIR"`
	TTL  time.Duration `name:"ttl" default:"168h" help:"How long the invite is valid."`
	Uses int           `default:"1" help:"How many clients it may register."`
	Note string        `help:"A note to tell invites apart in 'qbackupd invite ls'."`
}

func (c *inviteNewCmd) Run(e *cliEnv) error {
	book, err := store.OpenInvites(e.ctx, c.Data)
	if err != nil {
		return err
	}
	defer book.Close()
	token, inv, err := book.Create(e.ctx, c.TTL, c.Uses, c.Note)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, token)
	fmt.Fprintf(e.stderr, "invite %s: registers %d client(s) until %s; give the token above to the client, who runs\n  QBACKUP_INVITE=TOKEN qbackup register --server HOST:PORT --name NAME\nIt is shown only now; the server keeps only its hash.\n",
		inv.ID, inv.Uses, inv.Expires.Format(time.DateTime))
	return nil
}

type inviteLsCmd struct {
	Data string `required:"" env:"QBACKUPD_DATA" help:"Data directory of the server." placeholder:"DIR"`
}

func (c *inviteLsCmd) Run(e *cliEnv) error {
	book, err := store.OpenInvites(e.ctx, c.Data)
	if err != nil {
		return err
	}
	defer book.Close()
	list, err := book.List(e.ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tUSES LEFT\tEXPIRES\tSTATE\tNOTE")
	now := time.Now()
	for _, inv := range list {
		state := "valid"
		switch {
		case inv.Uses == 0:
			state = "used up"
		case !inv.Expires.After(now):
			state = "expired"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", inv.ID, inv.Uses, inv.Expires.Format(time.DateTime), state, inv.Note)
	}
	return tw.Flush()
}

type inviteRmCmd struct {
	Data string `required:"" env:"QBACKUPD_DATA" help:"Data directory of the server." placeholder:"DIR"`
	ID   string `arg:"" help:"ID of the invite, as 'qbackupd invite ls' shows it."`
}

func (c *inviteRmCmd) Run(e *cliEnv) error {
	book, err := store.OpenInvites(e.ctx, c.Data)
	if err != nil {
		return err
	}
	defer book.Close()
	if err := book.Revoke(e.ctx, c.ID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("no invite %q: 'qbackupd invite ls' lists them", c.ID)
		}
		return err
	}
	fmt.Fprintf(e.stderr, "invite %s revoked; clients it registered stay registered\n", c.ID)
	return nil
}

type checkCmd struct {
	Data   string `required:"" env:"QBACKUPD_DATA" help:"Data directory of the server." placeholder:"DIR"`
	Client string `help:"Check only the files of the client of this name." placeholder:"NAME"`
}

// Run checks every stored version (one file at a time, while the server
// runs or not), prints a line for each damaged one and a summary, and
// fails when it found damage.
func (c *checkCmd) Run(e *cliEnv) error {
	ck, err := store.OpenChecker(e.ctx, c.Data)
	if err != nil {
		return err
	}
	defer ck.Close()
	start := time.Now()
	st, err := ck.Check(e.ctx, store.CheckOptions{
		Client: c.Client,
		Sum:    fileSums,
		Checked: func(r store.CheckResult) {
			switch {
			case r.Damage != store.DamageNone:
				fmt.Fprintf(e.stdout, "damaged: client %s: %s version %d: %s (%s)\n", r.ClientName, proto.Quote(r.Name), r.Version, r.Damage, r.Detail)
			case r.WasDamaged:
				fmt.Fprintf(e.stdout, "intact again: client %s: %s version %d (damaged mark cleared)\n", r.ClientName, proto.Quote(r.Name), r.Version)
			}
		},
	})
	switch {
	case errors.Is(err, store.ErrUnknownClient):
		return fmt.Errorf("no client named %q in %s: give the name the client registered with (qbackup register --name)", c.Client, c.Data)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: run qbackupd check as the user qbackupd runs as", err)
	case err != nil && e.ctx.Err() != nil:
		return fmt.Errorf("check interrupted after %d versions (%d damaged so far); the damage it found is recorded, run it again to check the rest", st.Versions, st.Damaged)
	case err != nil:
		return err
	}
	fmt.Fprintf(e.stdout, "checked %d versions (%s) of %d clients in %v: %d damaged, %d intact again\n",
		st.Versions, formatBytes(uint64(st.Bytes)), st.Clients, time.Since(start).Round(time.Millisecond), st.Damaged, st.Cleared)
	if st.Changing > 0 {
		fmt.Fprintf(e.stdout, "%d versions changed under every attempt to read them (healed meanwhile) and were not checked\n", st.Changing)
	}
	if st.Damaged > 0 {
		return fmt.Errorf("found %d damaged versions, now marked so that restores refuse them: send each file again from its client (qbackup send) to heal it, or restore another version", st.Damaged)
	}
	return nil
}

type cliEnv struct {
	ctx            context.Context
	stdout, stderr io.Writer
}

// Main runs qbackupd with the command-line arguments args (without the
// program name) until ctx ends, and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c cli
	exit := -1
	parser, err := kong.New(&c,
		kong.Name("qbackupd"),
		kong.Description("The qbackup server: encrypted backup over QUIC."),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { exit = code }),
		kong.UsageOnError(),
		kong.Vars{"scrub_rate": strconv.Itoa(DefaultScrubRate), "max_handshakes": strconv.Itoa(DefaultMaxHandshakes),
			"max_handshakes_ip": strconv.Itoa(DefaultMaxHandshakesIP), "idle_session": DefaultIdleSession.String()},
	)
	if err != nil {
		fmt.Fprintf(stderr, "qbackupd: %v\n", err)
		return 2
	}
	kctx, err := parser.Parse(args)
	if exit >= 0 {
		return exit
	}
	if err != nil {
		fmt.Fprintf(stderr, "qbackupd: %v\n", err)
		return 2
	}
	if err := kctx.Run(&cliEnv{ctx: ctx, stdout: stdout, stderr: stderr}); err != nil {
		fmt.Fprintf(stderr, "qbackupd: %v\n", err)
		return 1
	}
	return 0
}
