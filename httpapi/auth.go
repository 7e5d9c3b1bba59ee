package httpapi

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"
)

// Scope is what a token may do: read (GET) or write (everything).
type Scope string

// The token scopes.
const (
	ScopeRead  Scope = "read"
	ScopeWrite Scope = "write"
)

// Token is a bearer token and its scope.
type Token struct {
	Secret string
	Scope  Scope
}

// ParseTokens reads "secret:scope,secret:scope"; the scope is read or write.
func ParseTokens(s string) ([]Token, error) {
	var tokens []Token
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		secret, scope, ok := strings.Cut(item, ":")
		if !ok || (Scope(scope) != ScopeRead && Scope(scope) != ScopeWrite) {
			return nil, fmt.Errorf("token %d: want <secret>:read or <secret>:write", len(tokens)+1)
		}
		if len(secret) < 16 {
			return nil, fmt.Errorf("token %d: a secret needs at least 16 characters", len(tokens)+1)
		}
		tokens = append(tokens, Token{Secret: secret, Scope: Scope(scope)})
	}
	return tokens, nil
}

// withAuth guards /v1: 401 without exactly one Authorization header holding a known bearer token, 403 when a read token writes. Health,
// readiness and the API documents stay open. Tokens are compared in constant time and never
// logged.
func withAuth(tokens []Token, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/") {
			next.ServeHTTP(w, r)
			return
		}
		// Two tokens would leave the scope to whichever one is read first.
		presented := r.Header.Values("Authorization")
		var scope Scope
		ok := false
		if len(presented) == 1 {
			scope, ok = authenticate(tokens, presented[0])
		}
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tally"`)
			status, p := newProblem(codeUnauthorized, "send Authorization: Bearer <token>", "")
			writeProblem(w, status, p)
			return
		}
		if scope != ScopeWrite && r.Method != http.MethodGet && r.Method != http.MethodHead {
			status, p := newProblem(codeForbidden, "this token may only read", "")
			writeProblem(w, status, p)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// authenticate compares the presented token with every known one, so the time taken does not
// tell which one matched or how much of it.
func authenticate(tokens []Token, header string) (Scope, bool) {
	scheme, presented, _ := strings.Cut(header, " ")
	presented = strings.TrimLeft(presented, " ")
	// The scheme is case-insensitive (RFC 9110 §11.1). "Bearer" holds no letter that
	// Unicode folds to a non-ASCII one, so EqualFold matches ASCII cases only.
	if !strings.EqualFold(scheme, "Bearer") || presented == "" {
		return "", false
	}
	var scope Scope
	for _, t := range tokens {
		if subtle.ConstantTimeCompare([]byte(presented), []byte(t.Secret)) == 1 {
			scope = t.Scope
		}
	}
	return scope, scope != ""
}
