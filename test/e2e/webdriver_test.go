package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// webDriver drives Debian's Chromium through chromedriver's W3C WebDriver
// API (plain HTTP and JSON): a real browser, with its cookie rules and
// Content-Security-Policy, for the sign-in flow.
type webDriver struct {
	t       *testing.T
	base    string // http://127.0.0.1:PORT/session/ID
	timeout time.Duration
}

const elementKey = "element-6066-11e4-a52e-4f735466cecf"

func startWebDriver(t *testing.T, width, height int) *webDriver {
	t.Helper()
	driver, err := exec.LookPath("chromedriver")
	needPeer(t, err == nil, "chromedriver is not installed (Debian package chromium-driver)")
	addr := freeAddr(t)
	port := addr[strings.LastIndex(addr, ":")+1:]
	cmd := exec.Command(driver, "--port="+port)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	wd := &webDriver{t: t, timeout: 30 * time.Second}
	root := "http://" + addr
	eventually(t, 30*time.Second, "chromedriver answers", func() (bool, string) {
		resp, err := http.Get(root + "/status")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", fmt.Sprintf("--window-size=%d,%d", width, height)}
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome", "goog:chromeOptions": map[string]any{"binary": "/usr/bin/chromium", "args": args}}}}
	var out struct {
		Value struct {
			SessionID string `json:"sessionId"`
		} `json:"value"`
	}
	wd.call(http.MethodPost, root+"/session", caps, &out)
	if out.Value.SessionID == "" {
		t.Fatal("chromedriver started no session")
	}
	wd.base = root + "/session/" + out.Value.SessionID
	t.Cleanup(func() {
		req, _ := http.NewRequest(http.MethodDelete, wd.base, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	})
	return wd
}

func (wd *webDriver) call(method, u string, in, out any) {
	wd.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, u, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 90 * time.Second}).Do(req)
	if err != nil {
		wd.t.Fatalf("webdriver %s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		wd.t.Fatalf("webdriver %s %s: %d %s", method, u, resp.StatusCode, truncate(string(b), 500))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			wd.t.Fatalf("webdriver %s: %v", u, err)
		}
	}
}

func (wd *webDriver) open(u string) {
	wd.call(http.MethodPost, wd.base+"/url", map[string]string{"url": u}, nil)
}

func (wd *webDriver) url() string {
	var out struct{ Value string }
	wd.call(http.MethodGet, wd.base+"/url", nil, &out)
	return out.Value
}

// waitURL waits for the browser to be at a URL with prefix.
func (wd *webDriver) waitURL(prefix string) {
	wd.t.Helper()
	eventually(wd.t, wd.timeout, "the browser at "+prefix, func() (bool, string) {
		u := wd.url()
		return strings.HasPrefix(u, prefix), u
	})
}

func (wd *webDriver) element(css string) string {
	wd.t.Helper()
	var out struct{ Value map[string]string }
	wd.call(http.MethodPost, wd.base+"/element", map[string]string{"using": "css selector", "value": css}, &out)
	if out.Value[elementKey] == "" {
		wd.t.Fatalf("no element %s at %s: %v", css, wd.url(), out.Value)
	}
	return out.Value[elementKey]
}

func (wd *webDriver) typeInto(css, text string) {
	wd.call(http.MethodPost, wd.base+"/element/"+wd.element(css)+"/value", map[string]string{"text": text}, nil)
}

func (wd *webDriver) click(css string) {
	wd.call(http.MethodPost, wd.base+"/element/"+wd.element(css)+"/click", map[string]any{}, nil)
}

// cookie returns the named cookie of the current page, "" when unset.
func (wd *webDriver) cookie(name string) string {
	var out struct {
		Value []struct{ Name, Value string }
	}
	wd.call(http.MethodGet, wd.base+"/cookie", nil, &out)
	for _, c := range out.Value {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}
