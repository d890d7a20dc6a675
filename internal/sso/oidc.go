package sso

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/mmgate/mmgate/internal/httpapi"
)

// AuthRequest is one authorization request from a client, from
// /oauth/authorize until its code is exchanged. It is stored as JSON.
type AuthRequest struct {
	ID                  string    `json:"id"`
	ClientID            string    `json:"client_id"`
	RedirectURI         string    `json:"redirect_uri"`
	State               string    `json:"state"`
	Nonce               string    `json:"nonce,omitempty"`
	Scopes              []string  `json:"scopes"`
	ResponseType        string    `json:"response_type"`
	ResponseMode        string    `json:"response_mode,omitempty"`
	Prompt              []string  `json:"prompt,omitempty"`
	MaxAge              *uint     `json:"max_age,omitempty"`
	LoginHint           string    `json:"login_hint,omitempty"`
	CodeChallenge       string    `json:"code_challenge,omitempty"`
	CodeChallengeMethod string    `json:"code_challenge_method,omitempty"`
	Created             time.Time `json:"created"`
	AuthTime            time.Time `json:"auth_time"`
	AMR                 []string  `json:"amr,omitempty"`
	Identity            int64     `json:"-"` // the column, 0 until someone signed in
}

var _ op.AuthRequest = (*AuthRequest)(nil)

func (a *AuthRequest) GetID() string          { return a.ID }
func (a *AuthRequest) GetACR() string         { return "" }
func (a *AuthRequest) GetAMR() []string       { return a.AMR }
func (a *AuthRequest) GetAudience() []string  { return []string{a.ClientID} }
func (a *AuthRequest) GetAuthTime() time.Time { return a.AuthTime }
func (a *AuthRequest) GetClientID() string    { return a.ClientID }
func (a *AuthRequest) GetCodeChallenge() *oidc.CodeChallenge {
	if a.CodeChallenge == "" {
		return nil
	}
	return &oidc.CodeChallenge{Challenge: a.CodeChallenge, Method: oidc.CodeChallengeMethod(a.CodeChallengeMethod)}
}
func (a *AuthRequest) GetNonce() string                   { return a.Nonce }
func (a *AuthRequest) GetRedirectURI() string             { return a.RedirectURI }
func (a *AuthRequest) GetResponseType() oidc.ResponseType { return oidc.ResponseType(a.ResponseType) }
func (a *AuthRequest) GetResponseMode() oidc.ResponseMode { return oidc.ResponseMode(a.ResponseMode) }
func (a *AuthRequest) GetScopes() []string                { return a.Scopes }
func (a *AuthRequest) GetState() string                   { return a.State }
func (a *AuthRequest) GetSubject() string {
	if a.Identity == 0 {
		return ""
	}
	return strconv.FormatInt(a.Identity, 10)
}
func (a *AuthRequest) Done() bool { return a.Identity != 0 }

// forcesLogin reports whether the client asked for a fresh password
// (prompt=login or max_age=0) rather than the running session.
func (a *AuthRequest) forcesLogin() bool {
	return slices.Contains(a.Prompt, oidc.PromptLogin) || (a.MaxAge != nil && *a.MaxAge == 0)
}

// Client is a registered application.
type Client struct {
	id       string
	secret   string
	redirect []string
	loginURL string
}

var _ op.Client = (*Client)(nil)

func (c *Client) GetID() string                       { return c.id }
func (c *Client) RedirectURIs() []string              { return c.redirect }
func (c *Client) PostLogoutRedirectURIs() []string    { return nil }
func (c *Client) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }

// AuthMethod is client_secret_post, what Mattermost sends; the token
// endpoint accepts Basic as well.
func (c *Client) AuthMethod() oidc.AuthMethod { return oidc.AuthMethodPost }
func (c *Client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c *Client) GrantTypes() []oidc.GrantType         { return []oidc.GrantType{oidc.GrantTypeCode} }
func (c *Client) LoginURL(id string) string            { return c.loginURL + "?id=" + id }
func (c *Client) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeBearer }
func (c *Client) IDTokenLifetime() time.Duration       { return time.Hour }
func (c *Client) DevMode() bool                        { return false }
func (c *Client) IDTokenUserinfoClaimsAssertion() bool { return true }
func (c *Client) ClockSkew() time.Duration             { return 0 }
func (c *Client) IsScopeAllowed(scope string) bool     { return scope == gitlabScope }
func (c *Client) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c *Client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}

// gitlabScope is the scope Mattermost's GitLab provider is configured with;
// a request with no scope at all gets it too (GitLab does the same).
const gitlabScope = "read_user"

// storage is op.Storage over the Store.
type storage struct {
	st      *Store
	clients map[string]*Client
	codeTTL time.Duration
	reqTTL  time.Duration
	tokTTL  time.Duration
	signing *signingKey
}

var _ op.Storage = (*storage)(nil)

type signingKey struct {
	id  string
	key *rsa.PrivateKey
}

func (k *signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k *signingKey) Key() any                                    { return k.key }
func (k *signingKey) ID() string                                  { return k.id }

type publicKey struct{ *signingKey }

func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return &k.key.PublicKey }

// loadSigningKey reads the shared RSA key, creating it on first start.
func loadSigningKey(ctx context.Context, st *Store) (*signingKey, error) {
	v, err := st.Key(ctx, "signing_key", func() (string, error) {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return "", err
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return "", err
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
	})
	if err != nil {
		return nil, fmt.Errorf("sso: signing key: %w", err)
	}
	b, _ := pem.Decode([]byte(v))
	if b == nil {
		return nil, errors.New("sso: the stored signing key is not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("sso: the stored signing key: %w", err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("sso: the stored signing key is not RSA")
	}
	pub, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	sum := sha256.Sum256(pub)
	return &signingKey{id: base64.RawURLEncoding.EncodeToString(sum[:12]), key: rk}, nil
}

// loadCryptoKey reads the shared key that encrypts access tokens and codes.
func loadCryptoKey(ctx context.Context, st *Store) ([32]byte, error) {
	var out [32]byte
	v, err := st.Key(ctx, "crypto_key", func() (string, error) {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		return base64.StdEncoding.EncodeToString(b), nil
	})
	if err != nil {
		return out, fmt.Errorf("sso: token key: %w", err)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil || len(b) != 32 {
		return out, errors.New("sso: the stored token key is not 32 bytes of base64")
	}
	copy(out[:], b)
	return out, nil
}

func newID() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func notFound(err error) error {
	if errors.Is(err, ErrNotFound) {
		return oidc.ErrInvalidRequest().WithDescription("unknown or expired sign-in request").WithParent(err)
	}
	return err
}

func (s *storage) CreateAuthRequest(ctx context.Context, r *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	a := &AuthRequest{
		ID: newID(), ClientID: r.ClientID, RedirectURI: r.RedirectURI, State: r.State, Nonce: r.Nonce,
		Scopes: r.Scopes, ResponseType: string(r.ResponseType), ResponseMode: string(r.ResponseMode),
		Prompt: r.Prompt, MaxAge: r.MaxAge, LoginHint: r.LoginHint,
		CodeChallenge: r.CodeChallenge, CodeChallengeMethod: string(r.CodeChallengeMethod),
		Created: time.Now().UTC(),
	}
	if a.CodeChallenge != "" && a.CodeChallengeMethod == "" {
		a.CodeChallengeMethod = string(oidc.CodeChallengeMethodPlain)
	}
	if err := s.st.SaveRequest(ctx, a, s.reqTTL); err != nil {
		return nil, err
	}
	return a, nil
}

func (s *storage) AuthRequestByID(ctx context.Context, id string) (op.AuthRequest, error) {
	r, err := s.st.Request(ctx, id)
	if err != nil {
		return nil, notFound(err)
	}
	return r, nil
}

func (s *storage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	r, err := s.st.RequestByCode(ctx, code, s.codeTTL)
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (s *storage) SaveAuthCode(ctx context.Context, id, code string) error {
	return s.st.SetCode(ctx, id, code)
}

func (s *storage) DeleteAuthRequest(ctx context.Context, id string) error {
	return s.st.DeleteRequest(ctx, id)
}

func (s *storage) CreateAccessToken(ctx context.Context, r op.TokenRequest) (string, time.Time, error) {
	ident, err := strconv.ParseInt(r.GetSubject(), 10, 64)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sso: subject %q is not an identity", r.GetSubject())
	}
	t := Token{ID: newID(), Identity: ident, Scopes: r.GetScopes(), ExpiresAt: time.Now().Add(s.tokTTL)}
	a, ok := r.(*AuthRequest)
	if !ok {
		return "", time.Time{}, fmt.Errorf("sso: tokens are issued for authorization codes only, not %T", r)
	}
	t.ClientID = a.ClientID
	// The client is authenticated by now: the code is used up here, once,
	// in the token's own transaction.
	if err := s.st.IssueToken(ctx, a.ID, t); err != nil {
		if errors.Is(err, ErrCodeReused) {
			return "", time.Time{}, oidc.ErrInvalidGrant().WithDescription("the code was already used").WithParent(err)
		}
		return "", time.Time{}, err
	}
	return t.ID, t.ExpiresAt, nil
}

func (s *storage) CreateAccessAndRefreshTokens(context.Context, op.TokenRequest, string) (string, string, time.Time, error) {
	return "", "", time.Time{}, oidc.ErrUnsupportedGrantType().WithDescription("refresh tokens are not issued")
}

func (s *storage) TokenRequestByRefreshToken(context.Context, string) (op.RefreshTokenRequest, error) {
	return nil, op.ErrInvalidRefreshToken
}

func (s *storage) TerminateSession(ctx context.Context, userID, clientID string) error {
	id, err := strconv.ParseInt(userID, 10, 64)
	if err != nil {
		return nil
	}
	return s.st.DeleteTokens(ctx, "", id, clientID)
}

func (s *storage) RevokeToken(ctx context.Context, tokenOrID, _, clientID string) *oidc.Error {
	if err := s.st.DeleteTokens(ctx, tokenOrID, 0, clientID); err != nil {
		return oidc.ErrServerError().WithParent(err)
	}
	return nil
}

func (s *storage) GetRefreshTokenInfo(context.Context, string, string) (string, string, error) {
	return "", "", op.ErrInvalidRefreshToken
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) { return s.signing, nil }
func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}
func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{s.signing}}, nil
}

func (s *storage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	c, ok := s.clients[id]
	if !ok {
		return nil, oidc.ErrInvalidClient().WithDescription("unknown client")
	}
	return c, nil
}

// AuthorizeClientIDSecret compares in constant time.
func (s *storage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	c, ok := s.clients[id]
	want := "\x00no client"
	if ok {
		want = c.secret
	}
	if !httpapi.SecretEqual(secret, want) || !ok {
		return oidc.ErrInvalidClient().WithDescription("wrong client_id or client_secret")
	}
	return nil
}

func (s *storage) fill(ctx context.Context, info *oidc.UserInfo, subject string, scopes []string) error {
	id, err := strconv.ParseInt(subject, 10, 64)
	if err != nil {
		return fmt.Errorf("sso: subject %q is not an identity", subject)
	}
	p, err := s.st.IdentityByID(ctx, id)
	if err != nil {
		return err
	}
	info.Subject = subject
	for _, sc := range scopes {
		switch sc {
		case oidc.ScopeProfile, gitlabScope:
			info.PreferredUsername, info.Name = p.Username, p.Name
		case oidc.ScopeEmail:
			info.Email, info.EmailVerified = p.Email, true
		}
	}
	return nil
}

func (s *storage) SetUserinfoFromScopes(ctx context.Context, info *oidc.UserInfo, userID, _ string, scopes []string) error {
	return s.fill(ctx, info, userID, scopes)
}

func (s *storage) SetUserinfoFromToken(ctx context.Context, info *oidc.UserInfo, tokenID, subject, _ string) error {
	t, err := s.st.Token(ctx, tokenID)
	if err != nil || strconv.FormatInt(t.Identity, 10) != subject {
		return errors.New("sso: the access token is unknown or expired")
	}
	return s.fill(ctx, info, subject, t.Scopes)
}

func (s *storage) SetIntrospectionFromToken(ctx context.Context, r *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	t, err := s.st.Token(ctx, tokenID)
	if err != nil || strconv.FormatInt(t.Identity, 10) != subject {
		return errors.New("sso: the access token is unknown or expired")
	}
	info := new(oidc.UserInfo)
	if err := s.fill(ctx, info, subject, t.Scopes); err != nil {
		return err
	}
	r.SetUserInfo(info)
	r.Scope, r.ClientID, r.Active = t.Scopes, t.ClientID, true
	r.Expiration = oidc.FromTime(t.ExpiresAt)
	return nil
}

func (s *storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errors.New("sso: JWT client authentication is not supported")
}

func (s *storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, errors.New("sso: the JWT profile grant is not supported")
}

func (s *storage) Health(ctx context.Context) error { return s.st.db.PingContext(ctx) }
