package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// cmdPostback is the postback intake's load generator: -n messages of
// -size bytes, -c concurrent clients, each POST /intake/mailroom/MAILBOX with
// mail_room's token header, one message per request (keep-alive
// connections, as mail_room's Faraday would reuse). It prints the wall time
// and the count of 200s; the rate that counts is computed by run.sh from the
// rows in the spool (durably stored), not from these answers alone.
func cmdPostback(args []string) error {
	fs := flag.NewFlagSet("postback", flag.ContinueOnError)
	url := fs.String("url", "", "http://ADDR/intake/mailroom/MAILBOX")
	token := fs.String("token", "", "the mailbox's token")
	n := fs.Int("n", 20000, "messages")
	c := fs.Int("c", 8, "concurrent clients")
	size := fs.Int("size", 10240, "message size in bytes")
	attach := fs.Int("attach", 0, "add an attachment of this many bytes (base64-encoded in the message)")
	max := fs.Duration("max", 40*time.Second, "stop sending after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" || *token == "" {
		return errors.New("-url and -token are required")
	}
	tr := &http.Transport{MaxIdleConnsPerHost: *c, MaxConnsPerHost: *c}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), *max)
	defer cancel()
	var next, ok, failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for ctx.Err() == nil {
				i := next.Add(1)
				if i > int64(*n) {
					return
				}
				msg := benchMessage(int(i), *size)
				if *attach > 0 {
					msg = withAttachment(msg, *attach)
				}
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, *url, bytes.NewReader(msg))
				if err != nil {
					return
				}
				req.Header.Set("Authorization", `Token token="`+*token+`"`)
				req.Header.Set("Content-Type", "text/plain")
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ok.Add(1)
				} else {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, resp.Status)
				}
			}
		}(w)
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	fmt.Printf("postback: %d answered 200, %d failed, in %.3f s (%.0f/s answered)\n", ok.Load(), failed.Load(), secs, float64(ok.Load())/secs)
	if e := firstErr.Load(); e != nil {
		fmt.Printf("first failure: %v\n", e)
	}
	fmt.Printf("RESULT ok=%d failed=%d secs=%.3f\n", ok.Load(), failed.Load(), secs)
	return nil
}

// benchMessage is a plain-text mail of exactly size bytes with a unique Message-ID.
func benchMessage(i, size int) []byte {
	head := fmt.Sprintf("From: Jira <jira-svc@tools.test>\r\nTo: alice@corp.test\r\nSubject: postback bench %d\r\n"+
		"Message-ID: <pb-%d-%d@bench.test>\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", i, time.Now().UnixNano(), i)
	var b strings.Builder
	b.WriteString(head)
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	if r := size - b.Len(); r > 0 {
		b.WriteString(strings.Repeat("y", r))
	}
	return []byte(b.String())
}

// withAttachment turns a plain message into multipart/mixed with its text
// and a binary attachment of n bytes.
func withAttachment(msg []byte, n int) []byte {
	head, body, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	head = bytes.Replace(head, []byte("Content-Type: text/plain; charset=us-ascii"),
		[]byte("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BENCH\""), 1)
	var b bytes.Buffer
	b.Write(head)
	b.WriteString("\r\n\r\n--BENCH\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	b.Write(body)
	b.WriteString("\r\n--BENCH\r\nContent-Type: application/octet-stream; name=\"report.bin\"\r\n" +
		"Content-Disposition: attachment; filename=\"report.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	raw := make([]byte, n)
	for i := range raw {
		raw[i] = byte(i * 7)
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	for len(enc) > 76 {
		b.WriteString(enc[:76])
		b.WriteString("\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc)
	b.WriteString("\r\n--BENCH--\r\n")
	return b.Bytes()
}
