package httpapi

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tally-ledger/tally/ledger"
)

// MaxHeaderBytes caps a request's line and headers; the API needs a few kilobytes (a token,
// a uid, trace context), and net/http's default is 1 MiB.
const MaxHeaderBytes = 32 << 10

// DefaultMaxConnections is how many connections the API serves at once unless told otherwise.
// With MaxHeaderBytes and MaxBodyBytes it bounds what clients can make the server hold:
// 1000 × (36 KiB + 64 KiB + 8 KiB) ≈ 105 MiB (docs/operations.md shows the sum).
const DefaultMaxConnections = 1000

// Listener wraps ln so that the answers net/http writes by itself, before any handler runs,
// reach clients as problem+json like every other refusal: a malformed request, an
// unsupported Transfer-Encoding (which net/http answers 501, and a client that retries 5xx
// would repeat forever) or an HTTP version other than 1.x become 400, headers over
// MaxHeaderBytes stay 431. It serves plain TCP; under TLS the bytes it sees are encrypted.
//
// At most maxConnections connections are open at once; the next waits in the kernel's accept
// queue until one closes, so a flood of slow uploads cannot hold unbounded memory. (This is
// netutil.LimitListener's rule; its connections hide CloseWrite, which a 431 needs.)
func Listener(ln net.Listener, maxConnections int) net.Listener {
	return &problemListener{Listener: ln, slots: make(chan struct{}, maxConnections), closed: make(chan struct{})}
}

type problemListener struct {
	net.Listener
	slots     chan struct{} // one token per open connection
	closed    chan struct{} // closed by Close, so an Accept waiting for a slot returns
	closeOnce sync.Once
}

func (l *problemListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func (l *problemListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &problemConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
}

// problemConn rewrites net/http's canned answers as they are written, and frees its slot
// when closed.
type problemConn struct {
	net.Conn
	release func()
}

func (c *problemConn) Close() error {
	defer c.release()
	return c.Conn.Close()
}

// CloseWrite lets net/http half-close the connection after a 431, as it does on a bare TCP
// connection, so the client reads the answer before the reset.
func (c *problemConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *problemConn) Write(p []byte) (int, error) {
	answer, ok := rewriteCanned(p)
	if !ok {
		return c.Conn.Write(p)
	}
	if _, err := c.Conn.Write(answer); err != nil {
		return 0, err
	}
	return len(p), nil
}

// cannedHeaders follow the status line of every answer net/http's conn.serve writes by
// itself, in one Write, and nothing else does: answers from handlers always carry a Date
// header (net/http/server.go, Go 1.26).
var cannedHeaders = []byte("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")

// rewriteCanned turns one of net/http's canned answers into a problem answer; ok is false
// for everything else.
func rewriteCanned(p []byte) (answer []byte, ok bool) {
	rest, ok := bytes.CutPrefix(p, []byte("HTTP/1.1 "))
	if !ok {
		return nil, false
	}
	end := bytes.Index(rest, []byte("\r\n"))
	if end < 3 || !bytes.HasPrefix(rest[end:], cannedHeaders) {
		return nil, false
	}
	statusLine := rest[:end]
	code, err := strconv.Atoi(string(statusLine[:3]))
	if err != nil {
		return nil, false
	}
	// net/http's reason after the status text is one of its own fixed phrases, never input.
	_, reason, _ := bytes.Cut(statusLine, []byte(": "))
	var status int
	var prob problem
	switch code {
	case http.StatusRequestHeaderFieldsTooLarge:
		status, prob = newProblem(codeHeadersTooLarge, fmt.Sprintf("the request line and headers are larger than %d bytes", MaxHeaderBytes), "")
	case http.StatusNotImplemented:
		status, prob = newProblem(codeMalformedRequest, "Transfer-Encoding is not supported; send the body with Content-Length, or with Transfer-Encoding: chunked alone", "")
	case http.StatusHTTPVersionNotSupported:
		status, prob = newProblem(codeMalformedRequest, "the HTTP version is not supported; use HTTP/1.1", "")
	default:
		detail := "the request is not valid HTTP/1.1"
		if len(reason) > 0 {
			detail += ": " + ledger.Clip(string(reason))
		}
		status, prob = newProblem(codeMalformedRequest, detail, "")
	}
	body := mustJSON(prob)
	head := fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\nContent-Length: %d\r\nDate: %s\r\nConnection: close\r\n\r\n",
		status, http.StatusText(status), len(body), time.Now().UTC().Format(http.TimeFormat))
	return append([]byte(head), body...), true
}
