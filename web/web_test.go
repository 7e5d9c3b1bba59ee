package web_test

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/web"
)

// The vendored uPlot files are the release's bytes: each matches uPlot.sha256, and every
// uPlot file embedded is listed there.
func TestVendoredUPlotMatchesItsChecksums(t *testing.T) {
	t.Parallel()
	sums, err := fs.ReadFile(web.Assets, "uPlot.sha256")
	require.NoError(t, err)
	listed := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		want, name, ok := strings.Cut(line, "  ")
		require.True(t, ok, "a sha256sum line: %q", line)
		body, err := fs.ReadFile(web.Assets, name)
		require.NoError(t, err)
		got := sha256.Sum256(body)
		require.Equal(t, want, hex.EncodeToString(got[:]), name)
		listed[name] = true
	}
	require.Len(t, listed, 3, "the script, the stylesheet and the licence")
	files, err := fs.Glob(web.Assets, "uPlot*")
	require.NoError(t, err)
	for _, name := range files {
		if name != "uPlot.sha256" && name != "uPlot.VERSION" {
			require.True(t, listed[name], "%s has no checksum", name)
		}
	}
}

// The page loads no inline script or style, which the Content-Security-Policy would block.
func TestPageHasNoInlineCode(t *testing.T) {
	t.Parallel()
	page, err := fs.ReadFile(web.Assets, "index.html")
	require.NoError(t, err)
	html := string(page)
	require.NotContains(t, html, "<style")
	require.NotContains(t, html, " style=")
	require.NotContains(t, html, " onclick=")
	require.Equal(t, strings.Count(html, "<script"), strings.Count(html, `<script src="/console/`), "every script is a console file")
	require.Contains(t, web.ContentSecurityPolicy, "script-src 'self'")
	require.NotContains(t, web.ContentSecurityPolicy, "unsafe")
}
