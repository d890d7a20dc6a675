package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// mmEvents is a minimal WebSocket client (RFC 6455, text frames only) of
// Mattermost's /api/v4/websocket, enough to see the events a user's client
// would get, such as open_dialog.
type mmEvents struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialEvents(t *testing.T, s *suite, token string) *mmEvents {
	t.Helper()
	u, _ := url.Parse(s.mmURL)
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k := make([]byte, 16)
	_, _ = rand.Read(k)
	fmt.Fprintf(conn, "GET /api/v4/websocket HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n", u.Host, base64.StdEncoding.EncodeToString(k), token)
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("websocket handshake: %v %v", resp, err)
	}
	e := &mmEvents{conn: conn, r: r}
	t.Cleanup(func() { _ = conn.Close() })
	return e
}

// next returns the next event of the given name, waiting at most d.
func (e *mmEvents) next(t *testing.T, event string, d time.Duration) map[string]any {
	t.Helper()
	_ = e.conn.SetReadDeadline(time.Now().Add(d))
	for {
		msg, err := e.readFrame()
		if err != nil {
			t.Fatalf("waiting for the %s event: %v", event, err)
		}
		var m map[string]any
		if json.Unmarshal(msg, &m) == nil && m["event"] == event {
			return m
		}
	}
}

func (e *mmEvents) readFrame() ([]byte, error) {
	var msg []byte
	for {
		h := make([]byte, 2)
		if _, err := io.ReadFull(e.r, h); err != nil {
			return nil, err
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0f
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			b := make([]byte, 2)
			if _, err := io.ReadFull(e.r, b); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(b))
		case 127:
			b := make([]byte, 8)
			if _, err := io.ReadFull(e.r, b); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(b)
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(e.r, payload); err != nil {
			return nil, err
		}
		if op == 0x9 { // ping: answer pong (masked, as a client must)
			e.write(0xA, payload)
			continue
		}
		if op == 0x8 {
			return nil, io.EOF
		}
		msg = append(msg, payload...)
		if fin {
			return msg, nil
		}
	}
}

func (e *mmEvents) write(op byte, payload []byte) {
	mask := make([]byte, 4)
	_, _ = rand.Read(mask)
	frame := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		frame = append(frame, 0x80|byte(n))
	default:
		frame = append(frame, 0x80|126, byte(n>>8), byte(n))
	}
	frame = append(frame, mask...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	_, _ = e.conn.Write(frame)
}

// dialogOf reads an open_dialog event's dialog (url, state, callback_id).
func dialogOf(t *testing.T, ev map[string]any) (u, callbackID, state string) {
	t.Helper()
	data, _ := ev["data"].(map[string]any)
	raw, _ := data["dialog"].(string)
	var d struct {
		URL    string `json:"url"`
		Dialog struct {
			CallbackID string `json:"callback_id"`
			State      string `json:"state"`
		} `json:"dialog"`
	}
	if err := json.Unmarshal([]byte(raw), &d); err != nil || !strings.HasPrefix(d.URL, "http") {
		t.Fatalf("open_dialog event without a dialog: %v", ev)
	}
	return d.URL, d.Dialog.CallbackID, d.Dialog.State
}
