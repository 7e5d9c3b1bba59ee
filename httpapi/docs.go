package httpapi

import (
	"embed"
	"io/fs"
	"net/http"
	"path"

	"github.com/tally-ledger/tally/ledger"
)

//go:embed openapi.json
var openAPIDocument []byte

//go:embed swaggerui
var swaggerUI embed.FS

func handleOpenAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeBody(w, http.StatusOK, "application/json", openAPIDocument)
	})
}

// handleDocs serves Swagger UI from the binary; the machines tally runs on may be offline.
func handleDocs() http.Handler {
	files, _ := fs.Sub(swaggerUI, "swaggerui") // the directory is embedded above
	server := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		file := r.PathValue("file")
		if file == "" || file == "index.html" {
			body, _ := fs.ReadFile(files, "index.html")
			writeBody(w, http.StatusOK, "text/html; charset=utf-8", body)
			return
		}
		name := path.Clean(file)
		// A missing file gets the same problem body as any other unknown path, not the file
		// server's plain text.
		if info, err := fs.Stat(files, name); err != nil || info.IsDir() {
			status, p := newProblem(ledger.CodeNotFound, "no such file: /api/docs/"+ledger.Clip(file), "")
			writeProblem(w, status, p)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + name
		w.Header().Set("Cache-Control", "public, max-age=86400")
		server.ServeHTTP(w, r2)
	})
}
