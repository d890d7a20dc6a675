package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"
)

// propMessageID is the post prop in which mmgate records the mail's
// Message-ID (without <>): internal/relay.PropMessageID.
const propMessageID = "mmgate_message_id"

func runID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// latencyMessage writes probe i of run as a small text message.
func latencyMessage(from, to, msgID string, i int) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "From: Jira <%s>\r\nTo: <%s>\r\nSubject: [bench] latency probe %d\r\n"+
			"Message-ID: <%s>\r\nDate: %s\r\nMIME-Version: 1.0\r\n"+
			"Content-Type: text/plain; charset=utf-8\r\n\r\n"+
			"Latency probe %d of the mmgate bench. This post can be ignored.\r\n",
			from, to, i, msgID, time.Now().Format(time.RFC1123Z), i)
		return err
	}
}

type probe struct {
	msgID string
	sent  time.Time // the 250 to the final dot
	err   error
	post  int64 // create_at, ms; 0 = not found yet
}

func cmdLatency(args []string) error {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	addr := fs.String("smtp", "", "mmgate SMTP address")
	user := fs.String("user", "jira", "SMTP login")
	pass := fs.String("pass", "benchpw", "SMTP password")
	from := fs.String("from", "jira-svc@tools.test", "envelope and header sender")
	to := fs.String("to", "alice@corp.test", "recipient")
	rate := fs.Float64("rate", 50, "messages per second")
	dur := fs.Duration("duration", 20*time.Second, "how long to send")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for posts after the last 250")
	_ = fs.Parse(args)
	if *addr == "" || *rate <= 0 || *dur <= 0 {
		return fmt.Errorf("need -smtp, a positive -rate and -duration")
	}
	mm, err := newMMReader("MM_URL", "MM_USER_TOKEN", "MM_DM_CHANNEL_ID")
	if err != nil {
		return err
	}
	n := int(*rate * dur.Seconds())
	run := runID()
	probes := make([]probe, n)
	start := time.Now()
	sinceMs := start.UnixMilli() - 1000

	// Send probe i at start + i/rate, each in its own session (as a tool does).
	var wg sync.WaitGroup
	sem := make(chan struct{}, 128)
	interval := time.Duration(float64(time.Second) / *rate)
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("bench-lat-%s-%05d@bench.mmgate", run, i)
			at, err := sendSMTP(smtpMessage{Addr: *addr, User: *user, Pass: *pass, From: *from, To: []string{*to},
				Write: latencyMessage(*from, *to, id, i), Timeout: 30 * time.Second})
			probes[i] = probe{msgID: id, sent: at, err: err}
		}(i)
	}
	wg.Wait()
	sendWall := time.Since(start)
	sent, failed := 0, 0
	var firstErr error
	byID := map[string]*probe{}
	for i := range probes {
		if probes[i].err != nil {
			failed++
			if firstErr == nil {
				firstErr = probes[i].err
			}
			continue
		}
		sent++
		byID[probes[i].msgID] = &probes[i]
	}
	fmt.Printf("sent %d messages in %.1fs (%.1f msgs/s offered), %d refused or failed\n",
		sent, sendWall.Seconds(), float64(sent)/sendWall.Seconds(), failed)
	if firstErr != nil {
		fmt.Printf("first send error: %v\n", firstErr)
	}

	// Read the DM channel until every accepted probe is there, or time is up.
	deadline := time.Now().Add(*wait)
	found := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		posts, err := mm.postsSince(ctx, sinceMs)
		cancel()
		if err != nil {
			fmt.Printf("reading posts: %v\n", err)
		}
		found = 0
		for _, p := range posts {
			if p.DeleteAt != 0 {
				continue
			}
			pr := byID[propString(p, propMessageID)]
			if pr == nil {
				continue
			}
			if pr.post == 0 || p.CreateAt < pr.post { // the first part of the message
				pr.post = p.CreateAt
			}
		}
		for _, pr := range byID {
			if pr.post != 0 {
				found++
			}
		}
		if found == sent || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}

	var lat []float64
	for _, pr := range byID {
		if pr.post != 0 {
			lat = append(lat, float64(pr.post-pr.sent.UnixMilli()))
		}
	}
	sort.Float64s(lat)
	med, p90, mx := median(lat), percentile(lat, 90), percentile(lat, 100)
	fmt.Printf("found %d of %d posts in alice's DM channel (matched on props.%s)\n", found, sent, propMessageID)
	if len(lat) > 0 {
		fmt.Printf("latency 250 → post create_at: min %.0f ms, median %.0f ms, p90 %.0f ms, p99 %.0f ms, max %.0f ms\n",
			lat[0], med, p90, percentile(lat, 99), mx)
	}
	// One machine-readable line for run.sh.
	fmt.Printf("RESULT sent=%d failed=%d found=%d median_ms=%.0f p90_ms=%.0f max_ms=%.0f\n",
		sent, failed, found, nanToNeg(med), nanToNeg(p90), nanToNeg(mx))
	return nil
}

// nanToNeg prints "no value" as -1.
func nanToNeg(v float64) float64 {
	if v != v {
		return -1
	}
	return v
}
