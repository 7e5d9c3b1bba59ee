package httpapi_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/postgres"
)

// BenchmarkSequentialDeposits is one client posting deposits one after another over HTTP.
// Run: go test ./httpapi -run '^$' -bench SequentialDeposits -count 5
func BenchmarkSequentialDeposits(b *testing.B) {
	url := pgtest.NewDatabase(b)
	db, err := postgres.Open(context.Background(), url)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
	defer srv.Close()
	u, err := db.CreateUser(context.Background(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		body := `{"uid":"` + uuid.NewString() + `","user_id":` + strconv.FormatInt(u.ID, 10) + `,"type":"DEPOSIT","amount":"1.00"}`
		resp, err := http.Post(srv.URL+"/v1/transaction", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}
