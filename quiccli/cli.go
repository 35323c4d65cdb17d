package quiccli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kong"
	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"golang.org/x/term"
)

// cli is the command line. Flags fill it; commands run with a *Client.
type cli struct {
	Home    string        `help:"Directory of this client's identity and key." env:"QBACKUP_HOME" placeholder:"DIR"`
	KeyBits int           `help:"RSA key size for a new identity." default:"3072" hidden:""`
	Stall   time.Duration `default:"${stall}" env:"QBACKUP_STALL" help:"When nothing is heard from the server for this long, move the connection to a new socket, or else reconnect and resume (send); 0: wait for the 60s idle timeout." placeholder:"DURATION"`
	CC      string        `name:"cc" enum:"bbr,reno" default:"bbr" env:"QBACKUP_CC" help:"Congestion controller for what this client sends: bbr keeps its rate under random loss and can be limited (--limit); reno is the QUIC module's own, for comparison and as a fallback."`

	Register registerCmd `cmd:"" help:"Register this client with a server."`
	Send     sendCmd     `cmd:"" help:"Back up files and directories."`
	Ls       lsCmd       `cmd:"" help:"List stored files."`
	Restore  restoreCmd  `cmd:"" help:"Restore a stored file or directory."`
	Cksum    cksumCmd    `cmd:"" help:"Print the POSIX cksum CRC and size of files, like cksum(1)."`
}

type env struct {
	ctx      context.Context
	client   *Client
	out      io.Writer
	errOut   io.Writer
	stdin    io.Reader
	terminal bool
}

type registerCmd struct {
	Server      string `required:"" help:"Server address." placeholder:"HOST:PORT"`
	Name        string `required:"" help:"Name to register under."`
	Fingerprint string `help:"Pin the server certificate's SHA-256 fingerprint instead of trusting it on first use." placeholder:"SHA256"`
	Invite      string `env:"QBACKUP_INVITE" help:"Invite token from the server's operator (qbackupd invite), for a server that registers new clients only by invite. The environment variable keeps it out of the process list." placeholder:"TOKEN"`
}

func (c *registerCmd) Run(e *env) error {
	id, err := e.client.Register(e.ctx, c.Server, c.Name, RegisterOptions{Fingerprint: c.Fingerprint, Invite: strings.TrimSpace(c.Invite)})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "registered %q with %s as client %s\nserver certificate sha256 %s\n", id.Name, id.Server, id.ClientID, id.Fingerprint)
	return nil
}

type sendCmd struct {
	Server      string        `help:"Server address (needed only before the first registration)." placeholder:"HOST:PORT"`
	Name        string        `help:"Client name (needed only before the first registration)."`
	Checksum    bool          `short:"c" help:"Hash every file and compare content, rather than trusting size and modification time."`
	Files       int           `default:"8" help:"Files larger than a chunk in flight at once; smaller files go 16 times as many at once (at most 192)."`
	Progress    string        `enum:"auto,bars,lines" default:"auto" help:"Progress display: auto (bars on a terminal), bars, lines."`
	Connections string        `default:"1" help:"Connections to spread each file's chunks over, each with its own key and congestion window: more help on a lossy link that one connection cannot fill. 'auto' adds them while the goodput still rises (at most ${maxconns})." placeholder:"N|auto"`
	Retries     int           `default:"10" help:"Reconnections after a lost connection, each resuming where the last stopped (0: give up at once)."`
	RetryMax    time.Duration `default:"30s" help:"Longest wait between reconnections (waits double from 1s)."`
	Invite      string        `env:"QBACKUP_INVITE" help:"Invite token from the server's operator, for a first registration with a server that registers new clients only by invite (see register --invite)." placeholder:"TOKEN"`
	Limit       Rate          `help:"Send at most this fast, over all connections together: 20mbit, 5MiB/s (bits: bit, kbit, mbit, gbit; bytes: B, kB, MB, GB, KiB, MiB, GiB); 0: no limit." placeholder:"RATE"`
	Paths       []string      `arg:"" help:"Files and directories to back up."`
}

func (c *sendCmd) Run(e *env) error {
	lock, err := lockSend(e.client.Home)
	if err != nil {
		return err
	}
	defer lock.Close()
	conns, auto := 0, c.Connections == "auto"
	if !auto {
		n, err := strconv.Atoi(c.Connections)
		if err != nil || n < 1 || n > MaxConnections {
			return fmt.Errorf("--connections %q: give a number from 1 to %d, or auto", c.Connections, MaxConnections)
		}
		conns = n
	}
	e.client.Invite = strings.TrimSpace(c.Invite)
	if c.Limit > 0 {
		if e.client.Congestion == quic.Reno {
			return &exitError{code: ExitUsage, err: errors.New("--limit needs --cc bbr: the limit is bbr's pacing rate")}
		}
		e.client.SendLimit = quic.NewRateLimit(float64(c.Limit))
	}
	rep := NewReporter(e.out, e.errOut, c.Progress == "bars" || (c.Progress == "auto" && e.terminal), "sending")
	defer context.AfterFunc(e.ctx, rep.Interrupt)()
	res, err := e.client.SendResilient(e.ctx, c.Server, c.Name,
		SendOptions{Paths: c.Paths, Checksum: c.Checksum, Files: c.Files, Connections: conns, AutoConnections: auto},
		ReconnectOptions{Attempts: c.Retries, MaxWait: c.RetryMax}, rep)
	if e.ctx.Err() != nil {
		rep.Interrupt() // AfterFunc's goroutine may not have run yet
	}
	rep.Close()
	if err != nil {
		return err
	}
	rate := float64(res.Bytes) / max(res.Elapsed.Seconds(), 1e-9)
	fmt.Fprintf(e.out, "%d sent, %d unchanged, %d failed", res.Sent, res.Unchanged, res.Failed)
	if res.Changed > 0 {
		fmt.Fprintf(e.out, ", %d changed while read", res.Changed)
	}
	if res.Incomplete > 0 {
		fmt.Fprintf(e.out, ", %d incomplete", res.Incomplete)
	}
	if res.Interrupted+res.NotStarted > 0 {
		fmt.Fprintf(e.out, ", %d interrupted, %d not started", res.Interrupted, res.NotStarted)
	}
	fmt.Fprintf(e.out, "; %s in %s (%s/s)\n", formatBytes(res.Bytes), res.Elapsed.Round(time.Millisecond), formatBytes(int64(rate)))
	switch {
	case e.ctx.Err() != nil:
		return errInterrupted
	case res.Failed > 0:
		return fmt.Errorf("%s not stored; first: %v", plural(res.Failed, "file"), res.FirstErr)
	case res.Interrupted+res.NotStarted > 0:
		return fmt.Errorf("the send ended before every entry was stored (%v); run the same command again to resume", res.FirstErr)
	case res.Incomplete > 0:
		return &exitError{code: ExitIncomplete, err: fmt.Errorf("%s stored without part of their metadata, or vanished before they were read; see the warnings above", plural(res.Incomplete, "file"))}
	}
	return nil
}

type lsCmd struct {
	Versions bool   `short:"a" help:"List every version, not only the latest."`
	Prefix   string `arg:"" optional:"" help:"Only this file or directory."`
}

func (c *lsCmd) Run(e *env) error {
	s, _, err := e.client.Connect(e.ctx, "", "")
	if err != nil {
		return err
	}
	defer s.Close()
	entries, err := s.List(e.ctx, c.Prefix, c.Versions)
	if err != nil {
		return err
	}
	if n, uerr := proto.Unquote(c.Prefix); len(entries) == 0 && uerr == nil && n != c.Prefix {
		// A name as ls shows it (proto.Quote), typed back in.
		if entries, err = s.List(e.ctx, n, c.Versions); err != nil {
			return err
		}
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODE\tNAME\tSIZE\tVERSION\tVERSIONS\tSTORED\tCKSUM\tVERIFIED")
	for _, en := range entries {
		verified := "no"
		switch {
		case en.Damaged:
			verified = "DAMAGED"
		case en.Verified:
			verified = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%d\t%s\n", modeString(en.Kind, en.Mode), proto.Quote(en.Name), en.Size, en.Version, en.Versions,
			time.Unix(0, en.StoredAt).Local().Format("2006-01-02 15:04:05"), en.CRC, verified)
	}
	return tw.Flush()
}

// modeString shows a kind and mode as ls -l does: "drwxr-xr-x".
func modeString(k proto.Kind, mode uint32) string {
	t := map[proto.Kind]byte{proto.KindFile: '-', proto.KindDir: 'd', proto.KindSymlink: 'l', proto.KindFIFO: 'p',
		proto.KindSocket: 's', proto.KindCharDev: 'c', proto.KindBlock: 'b'}[k]
	if t == 0 {
		t = '?'
	}
	b := []byte{t}
	for i, c := range "rwxrwxrwx" {
		if mode&(1<<(8-i)) != 0 {
			b = append(b, byte(c))
		} else {
			b = append(b, '-')
		}
	}
	special := func(bit uint32, at int, set, unset byte) {
		if mode&bit != 0 {
			if b[at] == 'x' {
				b[at] = set
			} else {
				b[at] = unset
			}
		}
	}
	special(proto.ModeSetuid, 3, 's', 'S')
	special(proto.ModeSetgid, 6, 's', 'S')
	special(proto.ModeSticky, 9, 't', 'T')
	return string(b)
}

type restoreCmd struct {
	Output    string        `short:"o" help:"Where to write (default: the name's last element, in the current directory)." placeholder:"PATH"`
	Version   int           `help:"Version to restore (default: the latest)."`
	Overwrite bool          `help:"Replace files that exist at the destination."`
	Progress  string        `enum:"auto,bars,lines" default:"auto" help:"Progress display: auto (bars on a terminal), bars, lines."`
	Retries   int           `default:"10" help:"Reconnections after a lost connection, each resuming where the last stopped (0: give up at once)."`
	RetryMax  time.Duration `default:"30s" help:"Longest wait between reconnections (waits double from 1s)."`
	Limit     Rate          `help:"Have the server send at most this fast: 20mbit, 5MiB/s (bits: bit, kbit, mbit, gbit; bytes: B, kB, MB, GB, KiB, MiB, GiB); 0: no limit." placeholder:"RATE"`
	Name      string        `arg:"" help:"Stored file or directory to restore."`
}

func (c *restoreCmd) Run(e *env) error {
	e.client.RestoreLimit = uint64(c.Limit)
	rep := NewReporter(e.out, e.errOut, c.Progress == "bars" || (c.Progress == "auto" && e.terminal), "restoring")
	defer context.AfterFunc(e.ctx, rep.Interrupt)()
	res, err := e.client.RestoreResilient(e.ctx,
		RestoreOptions{Name: strings.TrimSuffix(c.Name, "/"), Version: c.Version, Output: c.Output, Overwrite: c.Overwrite},
		ReconnectOptions{Attempts: c.Retries, MaxWait: c.RetryMax}, rep)
	if e.ctx.Err() != nil {
		rep.Interrupt()
	}
	rep.Close()
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "%d restored, %d identical, %d failed", res.Restored, res.Identical, res.Failed)
	if res.Skipped > 0 {
		fmt.Fprintf(e.out, ", %d skipped", res.Skipped)
	}
	if res.Incomplete > 0 {
		fmt.Fprintf(e.out, ", %d incomplete", res.Incomplete)
	}
	if res.NotStarted > 0 {
		fmt.Fprintf(e.out, ", %d not restored yet", res.NotStarted)
	}
	fmt.Fprintf(e.out, "; %s\n", formatBytes(res.Bytes))
	switch {
	case e.ctx.Err() != nil:
		return errInterrupted
	case res.NoSpace != nil:
		return fmt.Errorf("stopped: %v; free space there and run the same command again to finish (what is restored already is kept and skipped)", res.NoSpace)
	case res.Failed == 1 && res.Restored+res.Identical == 0:
		return res.FirstErr
	case res.Failed > 0:
		return fmt.Errorf("%s not restored; first: %v", plural(res.Failed, "file"), res.FirstErr)
	case res.Skipped == 1 && res.Restored+res.Identical+res.Incomplete == 0:
		return &exitError{code: ExitIncomplete, err: res.FirstSkip}
	case res.Skipped+res.Incomplete > 0:
		return &exitError{code: ExitIncomplete, err: fmt.Errorf("%s skipped or restored without part of their metadata; see the warnings above", plural(res.Skipped+res.Incomplete, "file"))}
	}
	return nil
}

type cksumCmd struct {
	Files []string `arg:"" optional:"" help:"Files (standard input if none)."`
}

func (*cksumCmd) homeless() {}

func (c *cksumCmd) Run(e *env) error {
	if len(c.Files) == 0 {
		ck := proto.NewCksum()
		if _, err := io.Copy(ck, bufio.NewReaderSize(e.stdin, 1<<20)); err != nil {
			return err
		}
		fmt.Fprintf(e.out, "%d %d\n", ck.Sum32(), ck.Len())
		return nil
	}
	failed := 0
	for _, name := range c.Files {
		ck := proto.NewCksum()
		var err error
		if name == "-" {
			_, err = io.Copy(ck, bufio.NewReaderSize(e.stdin, 1<<20))
		} else {
			var f *os.File
			if f, err = os.Open(name); err == nil {
				_, err = io.Copy(ck, bufio.NewReaderSize(f, 1<<20))
				f.Close()
			}
		}
		if err != nil {
			fmt.Fprintf(e.errOut, "qbackup: %s: %v\n", name, unwrapPathError(err))
			failed++
			continue
		}
		fmt.Fprintf(e.out, "%d %d %s\n", ck.Sum32(), ck.Len(), name)
	}
	if failed > 0 {
		return errSilent
	}
	return nil
}

// rawStrings keeps command-line arguments as the bytes they are. Kong's
// own string mapper goes through JSON, which turns bytes that are not
// UTF-8 into U+FFFD, and Linux file names (a path to send, a stored name
// to restore) are bytes.
var rawStrings = kong.KindMapper(reflect.String, kong.MapperFunc(func(ctx *kong.DecodeContext, target reflect.Value) error {
	t, err := ctx.Scan.PopValue("string")
	if err != nil {
		return err
	}
	s, ok := t.Value.(string)
	if !ok {
		return fmt.Errorf("expected a string, got %v", t.Value)
	}
	target.SetString(s)
	return nil
}))

// errSilent fails a command whose errors were already printed.
var errSilent = errors.New("")

// Main runs the command line and returns the exit status: ExitOK when
// everything worked, ExitFailed when something failed, ExitUsage for a
// usage error, ExitIncomplete when something was skipped, ExitInterrupted
// when ctx ended first.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var c cli
	exit := -1
	parser, err := kong.New(&c,
		kong.Name("qbackup"),
		kong.Description("Encrypted backup over QUIC."),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { exit = code }),
		kong.UsageOnError(),
		kong.Vars{"stall": DefaultStall.String(), "maxconns": strconv.Itoa(MaxConnections)},
		rawStrings,
	)
	if err != nil {
		fmt.Fprintf(stderr, "qbackup: %v\n", err)
		return ExitUsage
	}
	kctx, err := parser.Parse(args)
	if exit >= 0 {
		return exit
	}
	if err != nil {
		fmt.Fprintf(stderr, "qbackup: %v\n", err)
		return ExitUsage
	}
	home := c.Home
	if home == "" {
		if home, err = DefaultHome(); err != nil && needsHome(kctx) {
			fmt.Fprintf(stderr, "qbackup: %v\n", err)
			return ExitFailed
		}
	}
	e := &env{
		ctx:    ctx,
		client: &Client{Home: home, Out: stdout, Err: stderr, KeyBits: c.KeyBits, Stall: stallOption(c.Stall), Congestion: quic.Congestion(c.CC)},
		out:    stdout,
		errOut: stderr,
		stdin:  stdin,
	}
	if f, ok := stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		e.terminal = true
	}
	if err := kctx.Run(e); err != nil {
		var ee *exitError
		switch {
		case errors.Is(ctx.Err(), context.Canceled): // a signal, as cmd/qbackup wires it
			if errors.Is(err, errInterrupted) {
				fmt.Fprintf(stderr, "qbackup: interrupted; run the same command again to resume\n")
			} else {
				fmt.Fprintf(stderr, "qbackup: interrupted: %v\n", err)
			}
			return ExitInterrupted
		case errors.As(err, &ee):
			fmt.Fprintf(stderr, "qbackup: %v\n", ee.err)
			return ee.code
		case !errors.Is(err, errSilent):
			fmt.Fprintf(stderr, "qbackup: %v\n", err)
		}
		return ExitFailed
	}
	return ExitOK
}

// Exit statuses of qbackup (README, "Exit status").
const (
	ExitOK          = 0   // everything asked for was done
	ExitFailed      = 1   // something failed: see the messages
	ExitUsage       = 2   // the command line was wrong
	ExitIncomplete  = 3   // done, but some entries, or part of their metadata, were skipped
	ExitInterrupted = 130 // interrupted (SIGINT, SIGTERM): run the same command again
)

// exitError carries an exit status other than ExitFailed.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// errInterrupted ends a command that was interrupted after it said what
// it had done.
var errInterrupted = errors.New("interrupted")

// stallOption maps --stall to Client.Stall, where 0 means the default and
// a negative value means never.
func stallOption(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
