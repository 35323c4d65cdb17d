package quiccli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kong"
	"github.com/qbackup/qbackup/proto"
	"golang.org/x/term"
)

// cli is the command line. Flags fill it; commands run with a *Client.
type cli struct {
	Home    string        `help:"Directory of this client's identity and key." env:"QBACKUP_HOME" placeholder:"DIR"`
	KeyBits int           `help:"RSA key size for a new identity." default:"3072" hidden:""`
	Stall   time.Duration `default:"${stall}" env:"QBACKUP_STALL" help:"When nothing is heard from the server for this long, move the connection to a new socket, or else reconnect and resume (send); 0: wait for the 60s idle timeout." placeholder:"DURATION"`

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
	Paths       []string      `arg:"" type:"path" help:"Files and directories to back up."`
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
	rep := NewReporter(e.out, e.errOut, c.Progress == "bars" || (c.Progress == "auto" && e.terminal), "sending")
	res, err := e.client.SendResilient(e.ctx, c.Server, c.Name,
		SendOptions{Paths: c.Paths, Checksum: c.Checksum, Files: c.Files, Connections: conns, AutoConnections: auto},
		ReconnectOptions{Attempts: c.Retries, MaxWait: c.RetryMax}, rep)
	rep.Close()
	if err != nil {
		return err
	}
	rate := float64(res.Bytes) / max(res.Elapsed.Seconds(), 1e-9)
	fmt.Fprintf(e.out, "%d sent, %d unchanged, %d failed", res.Sent, res.Unchanged, res.Failed)
	if res.Skipped > 0 {
		fmt.Fprintf(e.out, ", %d skipped", res.Skipped)
	}
	fmt.Fprintf(e.out, "; %s in %s (%s/s)\n", formatBytes(res.Bytes), res.Elapsed.Round(time.Millisecond), formatBytes(int64(rate)))
	if !res.OK() {
		return fmt.Errorf("%s not stored; first: %v", plural(res.Failed, "file"), res.FirstErr)
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
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tVERSION\tVERSIONS\tSTORED\tCKSUM\tVERIFIED")
	for _, en := range entries {
		verified := "no"
		if en.Verified {
			verified = "yes"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%d\t%s\n", en.Name, en.Size, en.Version, en.Versions,
			time.Unix(0, en.StoredAt).Local().Format("2006-01-02 15:04:05"), en.CRC, verified)
	}
	return tw.Flush()
}

type restoreCmd struct {
	Output    string        `short:"o" help:"Where to write (default: the name's last element, in the current directory)." placeholder:"PATH"`
	Version   int           `help:"Version to restore (default: the latest)."`
	Overwrite bool          `help:"Replace files that exist at the destination."`
	Progress  string        `enum:"auto,bars,lines" default:"auto" help:"Progress display: auto (bars on a terminal), bars, lines."`
	Retries   int           `default:"10" help:"Reconnections after a lost connection, each resuming where the last stopped (0: give up at once)."`
	RetryMax  time.Duration `default:"30s" help:"Longest wait between reconnections (waits double from 1s)."`
	Name      string        `arg:"" help:"Stored file or directory to restore."`
}

func (c *restoreCmd) Run(e *env) error {
	rep := NewReporter(e.out, e.errOut, c.Progress == "bars" || (c.Progress == "auto" && e.terminal), "restoring")
	res, err := e.client.RestoreResilient(e.ctx,
		RestoreOptions{Name: strings.TrimSuffix(c.Name, "/"), Version: c.Version, Output: c.Output, Overwrite: c.Overwrite},
		ReconnectOptions{Attempts: c.Retries, MaxWait: c.RetryMax}, rep)
	rep.Close()
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "%d restored, %d failed; %s\n", res.Files, res.Failed, formatBytes(res.Bytes))
	if res.Failed > 0 {
		if res.Failed == 1 && res.Files == 0 {
			return res.FirstErr
		}
		return fmt.Errorf("%s not restored; first: %v", plural(res.Failed, "file"), res.FirstErr)
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

// errSilent fails a command whose errors were already printed.
var errSilent = errors.New("")

// Main runs the command line and returns the exit status: 0 when
// everything worked, 1 when something failed, 2 for a usage error.
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
	)
	if err != nil {
		fmt.Fprintf(stderr, "qbackup: %v\n", err)
		return 2
	}
	kctx, err := parser.Parse(args)
	if exit >= 0 {
		return exit
	}
	if err != nil {
		fmt.Fprintf(stderr, "qbackup: %v\n", err)
		return 2
	}
	home := c.Home
	if home == "" {
		if home, err = DefaultHome(); err != nil && needsHome(kctx) {
			fmt.Fprintf(stderr, "qbackup: %v\n", err)
			return 1
		}
	}
	e := &env{
		ctx:    ctx,
		client: &Client{Home: home, Out: stdout, Err: stderr, KeyBits: c.KeyBits, Stall: stallOption(c.Stall)},
		out:    stdout,
		errOut: stderr,
		stdin:  stdin,
	}
	if f, ok := stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		e.terminal = true
	}
	if err := kctx.Run(e); err != nil {
		if !errors.Is(err, errSilent) {
			if ctx.Err() != nil {
				err = fmt.Errorf("interrupted: %v", err)
			}
			fmt.Fprintf(stderr, "qbackup: %v\n", err)
		}
		return 1
	}
	return 0
}

// stallOption maps --stall to Client.Stall, where 0 means the default and
// a negative value means never.
func stallOption(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
