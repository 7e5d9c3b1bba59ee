// Package web is tally's console: a page for people, served by the API's own binary from
// embedded files, that uses nothing but the public API.
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
)

//go:embed assets
var embedded embed.FS

// Assets holds the console's files: index.html, console.js, console.css and the vendored
// uPlot release with its licence and checksums.
var Assets, _ = fs.Sub(embedded, "assets") // the directory is embedded above

// ContentSecurityPolicy is sent with every console file. Scripts and styles come only from
// the console's own files (no inline script or style element, no eval); the page talks only to
// its own origin; no other site may frame it.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func secure(h http.Header) {
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	// A new binary may bring new files; the browser asks again, cheaply.
	h.Set("Cache-Control", "no-cache")
}

// Page serves the console's one page, for /console and every deep link into it.
func Page() http.Handler {
	page, _ := fs.ReadFile(Assets, "index.html") // embedded above
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		secure(w.Header())
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page) //nolint:errcheck // the client may be gone; nothing to do about it
	})
}

// Files serves the console's assets by the path value "file"; notFound answers any other name.
func Files(notFound http.Handler) http.Handler {
	server := http.FileServerFS(Assets)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := path.Clean(r.PathValue("file"))
		if info, err := fs.Stat(Assets, name); err != nil || info.IsDir() || name == "index.html" {
			notFound.ServeHTTP(w, r)
			return
		}
		secure(w.Header())
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + name
		server.ServeHTTP(w, r2)
	})
}
