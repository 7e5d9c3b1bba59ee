// Package httpapi is tally's HTTP API: routes, handlers, the error table and middleware.
package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tally-ledger/tally/ledger"
)

// Health tracks whether the server should receive traffic.
type Health struct {
	shuttingDown atomic.Bool
}

// ShutDown makes /readyz fail so that load balancers stop sending requests.
func (h *Health) ShutDown() { h.shuttingDown.Store(true) }

// ShuttingDown reports whether ShutDown was called.
func (h *Health) ShuttingDown() bool { return h.shuttingDown.Load() }

// Option configures NewServer.
type Option func(*options)

type options struct {
	metrics *Metrics
	tokens  []Token
}

// WithMetrics records request and transaction metrics.
func WithMetrics(m *Metrics) Option { return func(o *options) { o.metrics = m } }

// WithTokens turns access control on: every /v1 request needs one of these bearer tokens.
func WithTokens(tokens []Token) Option { return func(o *options) { o.tokens = tokens } }

// NewServer returns the whole API as one handler.
func NewServer(store Store, log *slog.Logger, health *Health, opts ...Option) http.Handler {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	mux := http.NewServeMux()
	allowed := map[string][]string{}
	for _, rt := range routes(store, log, health, o.metrics) {
		mux.Handle(rt.method+" "+rt.pattern, rt.handler)
		allowed[rt.pattern] = append(allowed[rt.pattern], rt.method)
	}
	// A known path with another method gets a problem body, not the mux's plain text.
	for pattern, methods := range allowed {
		mux.Handle(pattern, methodNotAllowed(methods))
	}
	mux.Handle("/", handleNotFound())
	h := withRequestChecks(mux)
	if len(o.tokens) > 0 {
		h = withAuth(o.tokens, h)
	}
	return withRequestLog(log, o.metrics, withRecover(log, h))
}

// withRequestChecks refuses, for every route, what net/http passes on but the API cannot read
// one way only: a query string that does not parse or repeats a key (handlers read the first
// value and would drop the rest), a body in a Content-Encoding, the request target "*" and
// CONNECT. A request framed with Transfer-Encoding closes its connection after the answer: a
// proxy in front that framed it by Content-Length instead would otherwise have the rest of
// the body read as a second request (RFC 9112 §6.1).
func withRequestChecks(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) > 0 {
			w.Header().Set("Connection", "close")
		}
		if err := checkRequest(r); err != nil {
			var e *ledger.Error
			errors.As(err, &e) // checkRequest returns only *ledger.Error
			status, p := newProblem(e.Code, e.Detail, e.Field)
			writeProblem(w, status, p)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func checkRequest(r *http.Request) error {
	switch {
	case r.RequestURI == "*":
		// Go's server answers OPTIONS * itself; "PRI *" is the HTTP/2 preface.
		if r.Method == "PRI" {
			return &ledger.Error{Code: codeMalformedRequest, Detail: "the HTTP version is not supported; use HTTP/1.1"}
		}
		return &ledger.Error{Code: codeMalformedRequest, Detail: "the request target * is for OPTIONS only; send a path"}
	case r.Method == http.MethodConnect:
		return &ledger.Error{Code: codeMalformedRequest, Detail: "tally is not a proxy; CONNECT is not supported"}
	}
	if codings := r.Header.Values("Content-Encoding"); len(codings) > 1 || len(codings) == 1 && !strings.EqualFold(codings[0], "identity") {
		return &ledger.Error{Code: codeUnsupportedMedia, Detail: "Content-Encoding " + ledger.Clip(strings.Join(codings, ", ")) + " is not supported; send the body as it is"}
	}
	values, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return ledger.Invalid("", "the query string is malformed; escape each key and value (no bare ';' or '%')")
	}
	for _, k := range slices.Sorted(maps.Keys(values)) {
		if len(values[k]) > 1 {
			return duplicateKey(k, slices.Collect(maps.Keys(values)))
		}
	}
	return nil
}

// handleNotFound answers a path that names nothing with a problem, not the mux's plain text.
func handleNotFound() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status, p := newProblem(ledger.CodeNotFound, "no such endpoint: "+ledger.Clip(r.Method)+" "+ledger.Clip(r.URL.Path)+"; see /api/docs", "")
		writeProblem(w, status, p)
	})
}

func methodNotAllowed(methods []string) http.Handler {
	slices.Sort(methods)
	allow := strings.Join(methods, ", ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		status, p := newProblem(codeMethodNotAllowed, ledger.Clip(r.Method)+" is not allowed here; use "+allow, "")
		writeProblem(w, status, p)
	})
}

func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		encode(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

// ReadyHandler answers /readyz: 200 while the server is not shutting down and check (the
// database answers, with this binary's schema for the API) passes within 2 seconds, 503
// otherwise. The API and the admin port mount the same handler, so probes on either agree.
func ReadyHandler(health *Health, log *slog.Logger, check func(context.Context) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if health.ShuttingDown() {
			encode(w, http.StatusServiceUnavailable, map[string]string{"status": "shutting down"})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := check(ctx); err != nil {
			log.WarnContext(r.Context(), "not ready", "error", err)
			status := "database not ready"
			var notReady *NotReady
			if errors.As(err, &notReady) {
				status = notReady.Status
			}
			encode(w, http.StatusServiceUnavailable, map[string]string{"status": status})
			return
		}
		encode(w, http.StatusOK, map[string]string{"status": "ready"})
	})
}

// NotReady is a readiness check's failure that names what is not ready, such as "NATS not
// connected"; /readyz reports Status. Other failures read "database not ready".
type NotReady struct {
	Status string
	Err    error
}

func (e *NotReady) Error() string { return e.Status + ": " + e.Err.Error() }
func (e *NotReady) Unwrap() error { return e.Err }

type requestIDKey struct{}

// RequestID returns the id of the request being served, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// NewLogger returns a JSON logger that adds the request id to every line logged with a
// request's context.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(contextHandler{slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})})
}

type contextHandler struct{ slog.Handler }

func (h contextHandler) Handle(ctx context.Context, rec slog.Record) error {
	if id := RequestID(ctx); id != "" {
		rec.AddAttrs(slog.String("request_id", id))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		rec.AddAttrs(slog.String("trace_id", sc.TraceID().String()))
	}
	return h.Handler.Handle(ctx, rec)
}

func (h contextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return contextHandler{h.Handler.WithAttrs(attrs)}
}

func (h contextHandler) WithGroup(name string) slog.Handler {
	return contextHandler{h.Handler.WithGroup(name)}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// withRequestLog takes the request id from X-Request-ID (or makes one), echoes it, puts it in
// the context for every log line, and logs one line per request.
func withRequestLog(log *slog.Logger, m *Metrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-ID")
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-ID", id)
		ctx := context.WithValue(r.Context(), requestIDKey{}, id)
		rec := &statusRecorder{ResponseWriter: w}
		start := time.Now()
		routed := r.WithContext(ctx)
		next.ServeHTTP(rec, routed)
		elapsed := time.Since(start)
		// The mux records the matched pattern on the request it routed.
		m.request(routed.Pattern, r.Method, rec.status, elapsed)
		if span := trace.SpanFromContext(ctx); span.IsRecording() && routed.Pattern != "" {
			span.SetName(routed.Pattern)
			span.SetAttributes(attribute.String("http.route", routed.Pattern))
		}
		log.InfoContext(ctx, "request", "method", ledger.Clip(r.Method), "path", ledger.Clip(r.URL.Path),
			"status", rec.status, "duration_ms", float64(elapsed.Microseconds())/1000)
	})
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	rand.Read(b[:]) //nolint:errcheck // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

func withRecover(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(v)
				}
				log.ErrorContext(r.Context(), "panic", "value", v)
				status, p := newProblem(codeInternal, "internal error", "")
				writeProblem(w, status, p)
			}
		}()
		next.ServeHTTP(w, r)
	})
}
