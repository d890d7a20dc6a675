// Command oidc-provider is a real OpenID Connect provider for mmgate's
// end-to-end tests: zitadel/oidc's op package with that project's example
// storage (users from a JSON file, one registered web client), plus a
// session cookie of its own, so that a person who signed in once is signed
// in again without any prompt, as on an organisation's platform.
//
//	oidc-provider -listen 127.0.0.1:9998 -issuer http://127.0.0.1:9998 \
//	    -client mmgate -secret S -redirect http://127.0.0.1:8025/sso/upstream/callback -users users.json
//
// users.json maps ids to users: {"u1": {"ID": "u1", "Username": "ann",
// "Password": "…", "Email": "ann@corp.test", "EmailVerified": true,
// "FirstName": "Ann", "LastName": "Lee"}}.
//
// It prints "login-form" and "session-login" lines to stdout, so that a test
// can tell a prompt from a silent sign-in.
package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"html"
	"log"
	"net/http"
	"sync"

	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/op"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9998", "address")
	issuer := flag.String("issuer", "", "issuer URL")
	client := flag.String("client", "mmgate", "client id")
	secret := flag.String("secret", "", "client secret")
	redirect := flag.String("redirect", "", "the client's redirect URI")
	usersFile := flag.String("users", "", "users JSON file")
	flag.Parse()
	users, err := storage.StoreFromFile(*usersFile)
	if err != nil {
		log.Fatal(err)
	}
	storage.RegisterClients(storage.WebClient(*client, *secret, *redirect))
	st := storage.NewStorage(users)
	key := sha256.Sum256([]byte(*secret))
	provider, err := op.NewProvider(&op.Config{CryptoKey: key, CodeMethodS256: true, AuthMethodPost: true},
		st, op.StaticIssuer(*issuer), op.WithAllowInsecure())
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	sessions := map[string][2]string{} // cookie → username, password
	callback := func(r *http.Request, id string) string {
		return op.AuthCallbackURL(provider)(op.ContextWithIssuer(r.Context(), *issuer), id)
	}
	form := func(w http.ResponseWriter, id, msg string, status int) {
		fmt.Println("login-form")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		fmt.Fprintf(w, `<!DOCTYPE html><html lang="en"><title>Platform sign-in</title><p>%s</p>
<form method="post" action="/login/username"><input type="hidden" name="id" value="%s">
<label>Username <input name="username"></label><label>Password <input name="password" type="password"></label>
<button>Sign in</button></form></html>`, html.EscapeString(msg), html.EscapeString(id))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login/username", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("authRequestID")
		if c, err := r.Cookie("platform_session"); err == nil {
			mu.Lock()
			cred, ok := sessions[c.Value]
			mu.Unlock()
			if ok && st.CheckUsernamePassword(cred[0], cred[1], id) == nil {
				fmt.Println("session-login")
				http.Redirect(w, r, callback(r, id), http.StatusFound)
				return
			}
		}
		form(w, id, "", http.StatusOK)
	})
	mux.HandleFunc("POST /login/username", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		id, u, p := r.PostForm.Get("id"), r.PostForm.Get("username"), r.PostForm.Get("password")
		if err := st.CheckUsernamePassword(u, p, id); err != nil {
			form(w, id, "Wrong username or password.", http.StatusUnauthorized)
			return
		}
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		sid := hex.EncodeToString(b)
		mu.Lock()
		sessions[sid] = [2]string{u, p}
		mu.Unlock()
		http.SetCookie(w, &http.Cookie{Name: "platform_session", Value: sid, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
		http.Redirect(w, r, callback(r, id), http.StatusFound)
	})
	mux.Handle("/", provider)
	log.Printf("oidc-provider: %s on %s", *issuer, *listen)
	log.Fatal(http.ListenAndServe(*listen, mux))
}
