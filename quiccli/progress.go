package quiccli

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// Reporter shows the progress of a send or restore.
type Reporter interface {
	// Start announces how many files and bytes are about to move.
	Start(files int, bytes int64)
	// File starts reporting one file.
	File(name string, size int64) FileProgress
	// Warn reports something passed over.
	Warn(format string, args ...any)
	// Interrupt says the run was interrupted: Close leaves the display as
	// it was rather than completing it.
	Interrupt()
	// Close flushes the display.
	Close()
}

// FileProgress reports one file's progress.
type FileProgress interface {
	Add(n int64) // n more bytes moved
	Retry()      // the file starts over
	Done(result string, err error)
}

// NewReporter returns bars on a terminal, plain lines otherwise.
func NewReporter(out, errOut io.Writer, terminal bool, verb string) Reporter {
	if terminal {
		return newBarReporter(out, errOut, verb)
	}
	return &lineReporter{out: out, errOut: errOut, verb: verb}
}

// lineReporter writes one line per finished file: for logs and pipes.
type lineReporter struct {
	out, errOut io.Writer
	verb        string
	mu          sync.Mutex
}

func (r *lineReporter) Start(files int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.out, "%s %s, %s\n", r.verb, plural(files, "file"), formatBytes(bytes))
}

func (r *lineReporter) File(name string, size int64) FileProgress {
	return &lineFile{r: r, name: proto.Quote(name), size: size}
}

func (r *lineReporter) Warn(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.errOut, "warning: "+format+"\n", args...)
}

func (r *lineReporter) Interrupt() {}
func (r *lineReporter) Close()     {}

type lineFile struct {
	r       *lineReporter
	name    string
	size    int64
	retries int
}

func (f *lineFile) Add(int64) {}
func (f *lineFile) Retry()    { f.retries++ }
func (f *lineFile) Done(result string, err error) {
	f.r.mu.Lock()
	defer f.r.mu.Unlock()
	if err != nil {
		fmt.Fprintf(f.r.out, "FAILED     %s: %v\n", f.name, err)
		return
	}
	extra := ""
	if f.retries > 0 {
		extra = fmt.Sprintf(", after %d resends", f.retries)
	}
	fmt.Fprintf(f.r.out, "%-10s %s (%s%s)\n", result, f.name, formatBytes(f.size), extra)
}

// barReporter draws a bar per file in flight larger than noBarMax, and
// one for the total.
type barReporter struct {
	p      *mpb.Progress
	total  *mpb.Bar
	errOut io.Writer
	verb   string
	start  time.Time

	mu          sync.Mutex
	counted     map[string]int64 // bytes of each file counted in the total, at most its size
	interrupted bool
}

func newBarReporter(out, errOut io.Writer, verb string) *barReporter {
	return &barReporter{
		p:       mpb.New(mpb.WithOutput(out), mpb.WithWidth(100), mpb.WithRefreshRate(150*time.Millisecond)),
		errOut:  errOut,
		verb:    verb,
		counted: make(map[string]int64),
	}
}

func (r *barReporter) Start(files int, bytes int64) {
	r.start = time.Now()
	// Bars start with total 0 and get their size after, so they never
	// complete on their own: only Done and Close complete them, after the
	// result line is queued, so the last line is drawn before mpb stops.
	r.total = r.p.AddBar(0,
		mpb.BarPriority(1<<30), // always the bottom line
		mpb.PrependDecorators(
			decor.Name(fmt.Sprintf("total (%s)", plural(files, "file")), decor.WCSyncSpaceR),
			decor.Counters(decor.SizeB1024(0), "% .1f / % .1f", decor.WCSyncSpace),
		),
		mpb.AppendDecorators(
			decor.NewAverageSpeed(decor.SizeB1024(0), "% .1f", r.start, decor.WCSyncSpace),
			decor.OnComplete(decor.NewAverageETA(decor.ET_STYLE_GO, r.start, nil, decor.WCSyncSpace), "done"),
		),
	)
	r.total.SetTotal(bytes, false)
}

// noBarMax is the largest file that gets no bar of its own: small files
// come and go too fast to read one, and go many at once; the total bar
// counts them.
const noBarMax = 1 << 20

func (r *barReporter) File(name string, size int64) FileProgress {
	name = proto.Quote(name)
	if size <= noBarMax {
		return &barFile{r: r, name: name, size: size, last: time.Now()}
	}
	b := r.p.AddBar(0,
		mpb.BarRemoveOnComplete(),
		mpb.PrependDecorators(
			decor.Name(shorten(name, 40), decor.WCSyncSpaceR),
			decor.Counters(decor.SizeB1024(0), "% .1f / % .1f", decor.WCSyncSpace),
		),
		mpb.AppendDecorators(
			decor.EwmaSpeed(decor.SizeB1024(0), "% .1f", 30, decor.WCSyncSpace),
			decor.EwmaETA(decor.ET_STYLE_GO, 30, decor.WCSyncSpace),
		),
	)
	b.SetTotal(size, false)
	return &barFile{r: r, bar: b, name: name, size: size, last: time.Now()}
}

func (r *barReporter) Warn(format string, args ...any) {
	fmt.Fprintf(r.p, "warning: "+format+"\n", args...)
}

func (r *barReporter) Interrupt() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.interrupted = true
}

func (r *barReporter) isInterrupted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.interrupted
}

func (r *barReporter) Close() {
	if r.total != nil {
		if r.isInterrupted() {
			r.total.Abort(false) // as it was: the run did not finish
		} else {
			r.total.SetTotal(-1, true)
		}
	}
	r.p.Wait()
}

type barFile struct {
	r       *barReporter
	bar     *mpb.Bar
	name    string
	size    int64
	mu      sync.Mutex
	retries int
	last    time.Time
}

func (f *barFile) Add(n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if f.bar != nil {
		f.bar.EwmaIncrInt64(n, now.Sub(f.last))
	}
	f.last = now
	f.countLocked(n)
}

// countLocked adds to the total bar, counting each byte of the file once
// however often it is resent, in this session or after a reconnect.
func (f *barFile) countLocked(n int64) {
	r := f.r
	r.mu.Lock()
	defer r.mu.Unlock()
	n = min(n, f.size-r.counted[f.name])
	if n > 0 && r.total != nil {
		r.counted[f.name] += n
		r.total.EwmaIncrInt64(n, 0)
	}
}

func (f *barFile) Retry() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.retries++
	if f.bar != nil {
		f.bar.SetCurrent(0)
	}
}

func (f *barFile) Done(result string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if result != "interrupted" { // an interrupted file comes back after a reconnect
		f.countLocked(f.size) // the rest: unchanged, failed or skipped bytes
	}
	if result == "interrupted" && f.r.isInterrupted() {
		if f.bar != nil {
			f.bar.Abort(false) // left as it was: it says where the file stopped
		}
		return
	}
	if err != nil {
		fmt.Fprintf(f.r.p, "FAILED     %s: %v\n", f.name, err)
	} else {
		extra := ""
		if f.retries > 0 {
			extra = fmt.Sprintf(", after %d resends", f.retries)
		}
		fmt.Fprintf(f.r.p, "%-10s %s (%s%s)\n", result, f.name, formatBytes(f.size), extra)
	}
	if f.bar != nil {
		f.bar.SetTotal(-1, true)
	}
}

func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return "…" + string(r[len(r)-n+1:])
}

// plural says "1 file" or "2 files".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// formatBytes prints a byte count with a binary unit.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
