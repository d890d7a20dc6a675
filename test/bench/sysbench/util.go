package main

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/smtp"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx", to read a PostgreSQL spool
	_ "modernc.org/sqlite"             // database/sql driver "sqlite", to read the spool
)

func cmdFreePort(args []string) error {
	n := 1
	if len(args) > 0 {
		v, err := strconv.Atoi(args[0])
		if err != nil || v < 1 || v > 16 {
			return fmt.Errorf("count %q: want 1..16", args[0])
		}
		n = v
	}
	// Hold every listener until all are chosen so the ports differ.
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		ls = append(ls, l)
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
	}
	return nil
}

// waitGreeting dials addr until it answers with a 220 greeting or the
// deadline passes.
func waitGreeting(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			_, _ = io.WriteString(c, "QUIT\r\n")
			_ = c.Close()
			if rerr == nil && strings.HasPrefix(line, "220") {
				return nil
			}
			last = fmt.Errorf("greeting %q: %v", strings.TrimSpace(line), rerr)
		} else {
			last = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no SMTP greeting from %s within %s: %w", addr, timeout, last)
}

func cmdWaitSMTP(args []string) error {
	fs := flag.NewFlagSet("waitsmtp", flag.ExitOnError)
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("usage: waitsmtp [-timeout D] HOST:PORT")
	}
	return waitGreeting(fs.Arg(0), *timeout)
}

// spoolCounts reads the number of messages per state from a spool database,
// read-only (the spool may be in use).
func spoolCounts(ctx context.Context, path string) (map[string]int, int, error) {
	var (
		db  *sql.DB
		err error
	)
	if strings.HasPrefix(path, "postgres://") {
		db, err = sql.Open("pgx", path)
	} else {
		if _, err := os.Stat(path); err != nil {
			return nil, 0, err
		}
		db, err = sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(10000)")
	}
	if err != nil {
		return nil, 0, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT state, count(*) FROM messages GROUP BY state`)
	if err != nil {
		return nil, 0, fmt.Errorf("counting messages: %w", err)
	}
	defer rows.Close()
	m := map[string]int{}
	total := 0
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, 0, err
		}
		m[st] = n
		total += n
	}
	return m, total, rows.Err()
}

func cmdSpoolCount(args []string) error {
	fs := flag.NewFlagSet("spoolcount", flag.ExitOnError)
	path := fs.String("db", "", "spool database (spool.db, or a postgres:// DSN)")
	_ = fs.Parse(args)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, total, err := spoolCounts(ctx, *path)
	if err != nil {
		return err
	}
	// Shell-friendly: "total=N queued=N retrying=N posted=N quarantined=N".
	fmt.Printf("total=%d", total)
	for _, st := range []string{"queued", "retrying", "posted", "quarantined"} {
		fmt.Printf(" %s=%d", st, m[st])
	}
	fmt.Println()
	return nil
}

// procStatus reads the kB fields of /proc/PID/status (VmRSS, VmHWM, …).
func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	return parseProcStatus(string(b)), nil
}

func parseProcStatus(s string) map[string]int64 {
	out := map[string]int64{}
	for line := range strings.SplitSeq(s, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// percentile returns the p-th percentile (0..100) of sorted values by the
// nearest-rank method; NaN for none.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// median of unsorted values (mean of the middle two for an even count).
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// smtpMessage is one message to send over SMTP.
type smtpMessage struct {
	Addr, User, Pass string
	From             string
	To               []string
	// Write writes the message (header and body, CRLF lines) to the DATA
	// stream; dot-stuffing is done by the client.
	Write func(io.Writer) error
	// Timeout bounds the whole session.
	Timeout time.Duration
}

// sendSMTP runs one session (EHLO, AUTH PLAIN when User is set, MAIL, RCPT,
// DATA, QUIT) and returns the time the 250 to the final dot arrived.
func sendSMTP(m smtpMessage) (time.Time, error) {
	host, _, err := net.SplitHostPort(m.Addr)
	if err != nil {
		return time.Time{}, err
	}
	conn, err := net.DialTimeout("tcp", m.Addr, 10*time.Second)
	if err != nil {
		return time.Time{}, err
	}
	defer conn.Close()
	if m.Timeout > 0 {
		_ = conn.SetDeadline(time.Now().Add(m.Timeout))
	}
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		return time.Time{}, fmt.Errorf("greeting: %w", err)
	}
	if err := c.Hello("bench.localhost"); err != nil {
		return time.Time{}, fmt.Errorf("EHLO: %w", err)
	}
	if m.User != "" {
		// net/smtp sends PLAIN without TLS only to 127.0.0.1/::1/localhost.
		if err := c.Auth(smtp.PlainAuth("", m.User, m.Pass, host)); err != nil {
			return time.Time{}, fmt.Errorf("AUTH: %w", err)
		}
	}
	if err := c.Mail(m.From); err != nil {
		return time.Time{}, fmt.Errorf("MAIL: %w", err)
	}
	for _, to := range m.To {
		if err := c.Rcpt(to); err != nil {
			return time.Time{}, fmt.Errorf("RCPT %s: %w", to, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return time.Time{}, fmt.Errorf("DATA: %w", err)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	if err := m.Write(bw); err != nil {
		return time.Time{}, fmt.Errorf("writing message: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return time.Time{}, fmt.Errorf("writing message: %w", err)
	}
	if err := w.Close(); err != nil { // returns on the reply to "."
		return time.Time{}, fmt.Errorf("end of DATA: %w", err)
	}
	at := time.Now()
	_ = c.Quit()
	return at, nil
}
