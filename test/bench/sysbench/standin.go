package main

import (
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// standinBotID is the user id the stand-in gives every token.
const standinBotID = "standinbot0000000000000000"

// mmID returns a 26-character Mattermost-like id derived from s.
func mmID(s string) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	sum := sha256.Sum256([]byte(s))
	b := make([]byte, 26)
	for i := range b {
		b[i] = alphabet[int(sum[i])%len(alphabet)]
	}
	return string(b)
}

// standin is a stand-in Mattermost REST API: it answers the calls mmgate's
// relay makes, at once, with plausible JSON, and counts them. It stores
// nothing: posts are echoed, uploads are read and discarded.
type standin struct {
	seq   atomic.Int64
	posts atomic.Int64
	files atomic.Int64
	calls atomic.Int64
}

func (s *standin) nextID(kind string) string {
	return mmID(fmt.Sprintf("%s-%d-%d", kind, s.seq.Add(1), time.Now().UnixNano()))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, status int, id, msg string) {
	writeJSON(w, status, map[string]any{"id": id, "message": msg, "status_code": status})
}

func user(id, name string) map[string]any {
	return map[string]any{"id": id, "username": name, "email": name + "@corp.test", "delete_at": 0}
}

// ServeHTTP routes /api/v4/… calls.
func (s *standin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	p, ok := strings.CutPrefix(r.URL.Path, "/api/v4")
	if !ok {
		apiError(w, http.StatusNotFound, "api.context.404.app_error", "not found")
		return
	}
	if p != "/system/ping" && !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		apiError(w, http.StatusUnauthorized, "api.context.session_expired.app_error", "no token")
		return
	}
	seg := strings.Split(strings.Trim(p, "/"), "/")
	switch {
	case r.Method == http.MethodGet && p == "/system/ping":
		writeJSON(w, http.StatusOK, map[string]any{"status": "OK", "ActiveSearchBackend": "database"})
	case r.Method == http.MethodGet && p == "/users/me":
		u := user(standinBotID, "standinbot")
		u["is_bot"] = true
		writeJSON(w, http.StatusOK, u)
	case r.Method == http.MethodGet && len(seg) == 3 && seg[0] == "users" && seg[1] == "username":
		writeJSON(w, http.StatusOK, user(mmID("user:"+strings.ToLower(seg[2])), strings.ToLower(seg[2])))
	case r.Method == http.MethodGet && len(seg) == 3 && seg[0] == "users" && seg[1] == "email":
		name, _, _ := strings.Cut(strings.ToLower(seg[2]), "@")
		writeJSON(w, http.StatusOK, user(mmID("user:"+name), name))
	case r.Method == http.MethodPost && p == "/channels/direct":
		var ids []string
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&ids); err != nil || len(ids) != 2 {
			apiError(w, http.StatusBadRequest, "api.context.invalid_body_param.app_error", "need two user ids")
			return
		}
		a, b := ids[0], ids[1]
		if a > b {
			a, b = b, a
		}
		writeJSON(w, http.StatusCreated, map[string]any{"id": mmID("dm:" + a + "__" + b), "type": "D", "name": a + "__" + b})
	case r.Method == http.MethodGet && len(seg) == 6 && seg[0] == "teams" && seg[1] == "name" && seg[3] == "channels":
		writeJSON(w, http.StatusOK, map[string]any{"id": mmID("ch:" + seg[2] + "/" + seg[5]), "type": "O", "name": seg[5]})
	case r.Method == http.MethodGet && len(seg) == 3 && seg[0] == "channels" && seg[2] == "posts":
		writeJSON(w, http.StatusOK, map[string]any{"order": []string{}, "posts": map[string]any{}})
	case r.Method == http.MethodGet && p == "/config/client":
		writeJSON(w, http.StatusOK, map[string]string{"MaxPostSize": "16383", "MaxFileSize": "104857600", "Version": "11.4.0"})
	case r.Method == http.MethodPost && p == "/posts":
		s.createPost(w, r)
	case r.Method == http.MethodPost && p == "/files":
		s.uploadFiles(w, r)
	default:
		apiError(w, http.StatusNotFound, "api.context.404.app_error", "stand-in does not know "+r.Method+" "+p)
	}
}

func (s *standin) createPost(w http.ResponseWriter, r *http.Request) {
	var in map[string]any
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
		apiError(w, http.StatusBadRequest, "api.context.invalid_body_param.app_error", "bad post")
		return
	}
	if ch, _ := in["channel_id"].(string); ch == "" {
		apiError(w, http.StatusBadRequest, "model.post.is_valid.channel_id.app_error", "no channel")
		return
	}
	now := time.Now().UnixMilli()
	in["id"] = s.nextID("post")
	in["user_id"] = standinBotID
	in["create_at"], in["update_at"] = now, now
	s.posts.Add(1)
	writeJSON(w, http.StatusCreated, in)
}

func (s *standin) uploadFiles(w http.ResponseWriter, r *http.Request) {
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || params["boundary"] == "" {
		apiError(w, http.StatusBadRequest, "api.file.upload_file.read_request.app_error", "not multipart")
		return
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	var infos []map[string]any
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			apiError(w, http.StatusBadRequest, "api.file.upload_file.read_request.app_error", err.Error())
			return
		}
		if part.FormName() != "files" {
			_, _ = io.Copy(io.Discard, part)
			continue
		}
		n, err := io.Copy(io.Discard, part)
		if err != nil {
			apiError(w, http.StatusBadRequest, "api.file.upload_file.read_request.app_error", err.Error())
			return
		}
		infos = append(infos, map[string]any{"id": s.nextID("file"), "name": part.FileName(), "size": n,
			"mime_type": "application/octet-stream"})
	}
	s.files.Add(int64(len(infos)))
	writeJSON(w, http.StatusCreated, map[string]any{"file_infos": infos, "client_ids": []string{}})
}

func cmdStandin(args []string) error {
	fs := flag.NewFlagSet("standin", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on (loopback)")
	delay := fs.Duration("delay", 0, "answer every call after this long (a Mattermost's latency)")
	_ = fs.Parse(args)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	s := &standin{}
	var h http.Handler = s
	if *delay > 0 {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(*delay)
			s.ServeHTTP(w, r)
		})
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(slog.Default().Handler(), slog.LevelWarn)}
	fmt.Printf("standin listening on http://%s\n", l.Addr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		_ = srv.Close()
	}()
	err = srv.Serve(l)
	fmt.Fprintf(os.Stderr, "standin: %d calls, %d posts, %d files\n", s.calls.Load(), s.posts.Load(), s.files.Load())
	if err == http.ErrServerClosed {
		return nil
	}
	return err
}
