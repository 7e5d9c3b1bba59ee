package web_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/postgres"
)

// BenchmarkConsoleUserPage opens a user's console page over histories of different lengths:
// "api" makes the requests the page makes when it opens (access check, user, chart series,
// first history page), "chromium" loads the page in the browser until the chart and the history
// are drawn. BENCH_LONG_HISTORY adds a history of a million transactions.
// Run: BENCH_LONG_HISTORY=1 go test ./web -run '^$' -bench ConsoleUserPage -benchtime 20x -count 3
func BenchmarkConsoleUserPage(b *testing.B) {
	sizes := []int{10, 20_000}
	if os.Getenv("BENCH_LONG_HISTORY") != "" {
		sizes = append(sizes, 1_000_000)
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("history=%d", n), func(b *testing.B) {
			db, _ := pgtest.NewDB(b)
			ctx := context.Background()
			u, err := db.CreateUser(ctx, "bench")
			if err != nil {
				b.Fatal(err)
			}
			// n deposits of 0.01 a minute apart, every 50th refused, as a long-lived account has.
			for _, sql := range []string{`INSERT INTO transactions (uid, user_id, seq, type, amount, ts,
				timestamp_given, status, reason, balance_after, response_status, response_body)
				SELECT gen_random_uuid(), $1, g, 'DEPOSIT', 1, '2020-01-01'::timestamptz + g * interval '1 minute', true,
				       CASE WHEN g % 50 = 0 THEN 'REJECTED' ELSE 'APPLIED' END,
				       CASE WHEN g % 50 = 0 THEN 'balance_limit_exceeded' END,
				       CASE WHEN g % 50 = 0 THEN NULL ELSE g - g / 50 END, 200, '\x'
				FROM generate_series(1, $2::int) g`,
				"UPDATE users SET balance = $2 - $2 / 50, last_seq = $2 WHERE id = $1",
			} {
				if _, err := db.Pool().Exec(ctx, sql, u.ID, n); err != nil {
					b.Fatal(err)
				}
			}
			for _, sql := range []string{"VACUUM ANALYZE transactions", "CHECKPOINT"} {
				if _, err := db.Pool().Exec(ctx, sql); err != nil {
					b.Fatal(err)
				}
			}
			srv := newBenchServer(b, db)
			b.Run("api", func(b *testing.B) {
				for b.Loop() {
					for _, r := range []struct{ method, path string }{
						{"GET", "/v1/users?limit=1"},
						{"POST", "/v1/user"},
						{"GET", fmt.Sprintf("/v1/user/%d", u.ID)},
						{"GET", fmt.Sprintf("/v1/user/%d/balance/series?points=200", u.ID)},
						{"GET", fmt.Sprintf("/v1/user/%d/transactions?status=ALL&limit=50", u.ID)},
					} {
						benchRequest(b, r.method, srv+r.path)
					}
				}
			})
			b.Run("chromium", func(b *testing.B) {
				ctx := startBrowser(b)
				ready := "document.getElementById('chart').dataset.points === '200' && " +
					"document.querySelectorAll('#history-table tbody tr').length === " + fmt.Sprint(min(n, 50)) + " && performance.now()"
				var total float64
				for b.Loop() {
					if err := chromedp.Do(ctx, chromedp.Navigate(srv+fmt.Sprintf("/console/users/%d", u.ID))); err != nil {
						b.Fatal(err)
					}
					// performance.now() counts from the navigation's start: the time until the
					// page shows the user, the chart and the history.
					usable, err := chromedp.Run(ctx, chromedp.Poll[float64](ready, chromedp.WithPollingInterval(2*time.Millisecond)))
					if err != nil {
						b.Fatal(err)
					}
					total += usable
				}
				b.ReportMetric(total/float64(b.N), "ms-to-usable")
			})
		})
	}
}

func newBenchServer(b *testing.B, db *postgres.DB) string {
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}))
	b.Cleanup(srv.Close)
	return srv.URL
}

func benchRequest(b *testing.B, method, url string) {
	var body io.Reader
	if method == "POST" {
		body = strings.NewReader("{}") // the scope probe: refused with 422, creates nothing
	}
	req, err := http.NewRequestWithContext(context.Background(), method, url, body)
	if err != nil {
		b.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	want := http.StatusOK
	if method == "POST" {
		want = http.StatusUnprocessableEntity
	}
	if res.StatusCode != want {
		b.Fatalf("%s %s: %d", method, url, res.StatusCode)
	}
}
