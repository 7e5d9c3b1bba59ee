package httpapi_test

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
)

// Connections beyond the listener's cap wait in the kernel's queue until one closes.
func TestListenerCapsConnections(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}), ReadHeaderTimeout: time.Minute}
	go srv.Serve(httpapi.Listener(ln, 2)) //nolint:errcheck // ends with ErrServerClosed
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	addr := ln.Addr().String()
	ask := func(conn net.Conn) error {
		if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: tally\r\n\r\n")); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		return resp.Body.Close()
	}
	var held []net.Conn
	for range 2 {
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() }) //nolint:errcheck // one of them is closed by the test already
		require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
		require.NoError(t, ask(conn), "connections within the cap are served")
		held = append(held, conn)
	}
	waiting, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { waiting.Close() }) //nolint:errcheck // nothing to do about a failed close
	require.NoError(t, waiting.SetDeadline(time.Now().Add(300*time.Millisecond)))
	var timeout net.Error
	require.ErrorAs(t, ask(waiting), &timeout, "the third connection is not served while two are open")
	require.True(t, timeout.Timeout())
	require.NoError(t, held[0].Close())
	require.NoError(t, waiting.SetDeadline(time.Now().Add(10*time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(waiting), nil)
	require.NoError(t, err, "it is served once one closes")
	require.NoError(t, resp.Body.Close())
}
