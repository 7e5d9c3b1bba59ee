package web_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/postgres"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write docs/img/console.png from the demo data")

// chromium finds Debian's chromium. Without it the browser tests skip, except under CI=1,
// where a skip would hide that the console went untested.
func chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is missing and CI is set: the console's browser tests must run (apt-get install -y chromium)")
	}
	t.Skip("chromium is missing: the console's browser tests are skipped (apt-get install -y chromium)")
	return ""
}

// page is a browser tab on a console served by a real server on a real database.
type page struct {
	ctx  context.Context
	base string
	db   *postgres.DB
	t    *testing.T
}

// openConsole starts a tally API on a fresh database and a headless chromium with a fresh
// profile. Every console message the page logs (a Content-Security-Policy violation, an
// uncaught exception) fails the test.
func openConsole(t *testing.T, opts ...httpapi.Option) *page {
	t.Helper()
	db, _ := pgtest.NewDB(t)
	srv := httptest.NewServer(httpapi.NewServer(db, httpapi.NewLogger(io.Discard, 0), &httpapi.Health{}, opts...))
	t.Cleanup(srv.Close)

	ctx := startBrowser(t)
	messages := chromedp.Console(ctx)
	problems := make(chan string, 100)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			// The 401 and 403 the console provokes on purpose are logged as failed loads.
			if strings.Contains(m.Text, "status of 401") || strings.Contains(m.Text, "status of 403") ||
				strings.Contains(m.Text, "status of 402") || strings.Contains(m.Text, "status of 422") {
				continue
			}
			problems <- m.String()
		}
	}()
	t.Cleanup(func() {
		select {
		case m := <-problems:
			t.Errorf("the page logged: %s", m)
		default:
		}
	})
	return &page{ctx: ctx, base: srv.URL, db: db, t: t}
}

// startBrowser starts a headless chromium with a fresh profile, closed when the test ends.
func startBrowser(tb testing.TB) context.Context {
	tb.Helper()
	exe := chromium(tb)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.UserDataDir(tb.TempDir()),
		chromedp.WindowSize(1280, 1000))
	tb.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(allocCtx)
	tb.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		tb.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// do runs actions with a deadline; a loaded machine makes a browser slow, not wrong.
func (p *page) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 60*time.Second)
	defer cancel()
	require.NoError(p.t, chromedp.Do(ctx, actions...))
}

// eval returns a JavaScript expression's value.
func eval[T any](p *page, expression string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expression))
	require.NoError(p.t, err, expression)
	return v
}

// waitFor waits until a JavaScript expression is true.
func (p *page) waitFor(expression string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 60*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expression, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second)))
	require.NoError(p.t, err, "waiting for %s", expression)
}

func (p *page) text(id string) string {
	p.t.Helper()
	return eval[string](p, "document.getElementById("+jsString(id)+").textContent")
}

// api calls the API directly, as a client other than the page would.
func (p *page) api(method, path, token, body string) (int, map[string]any) {
	p.t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, p.base+path, strings.NewReader(body))
	require.NoError(p.t, err)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(p.t, err)
	defer res.Body.Close()
	var out map[string]any
	require.NoError(p.t, json.NewDecoder(res.Body).Decode(&out))
	return res.StatusCode, out
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// setValue sets a form control's value as a person typing it would, with an input event.
func setValue(id, value string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void]("(() => { const el = document.getElementById(" + jsString(id) + "); el.value = " +
		jsString(value) + "; el.dispatchEvent(new Event('input', {bubbles: true})); })()")
}

// post fills the form and sends it, and waits for the answer the page shows.
func (p *page) post(typ, amount, timestamp string) (status, uid string) {
	p.t.Helper()
	uid = p.text("post-uid")
	p.do(setValue("post-type", typ), setValue("post-amount", amount), setValue("post-time", timestamp),
		chromedp.Evaluate[chromedp.Void]("document.getElementById('post-facts')?.remove()"),
		chromedp.Click(chromedp.CSS("#post-send")))
	p.waitFor("document.getElementById('post-facts') && document.getElementById('post-uid').textContent !== " + jsString(uid))
	return eval[string](p, "document.getElementById('post-facts').dataset.status"), uid
}

func TestConsole(t *testing.T) {
	t.Parallel()
	p := openConsole(t)
	status, user := p.api("POST", "/v1/user", "", `{"name": "Zoë Console"}`)
	require.Equal(t, 201, status)
	id := fmt.Sprint(user["id"])
	_, other := p.api("POST", "/v1/user", "", `{"name": "Zed Other"}`)

	t.Run("find a user by name prefix and open the page", func(t *testing.T) {
		p.t = t
		p.do(chromedp.Navigate(p.base + "/console"))
		p.waitFor("document.getElementById('access').textContent.includes('read and write')")
		p.do(chromedp.SendKeys(chromedp.CSS("#find"), "Zo"), chromedp.Click(chromedp.CSS("#find-form button")))
		p.waitFor("document.querySelectorAll('#find-results a').length === 1")
		require.Equal(t, "Zoë Console", p.text("find-results")[:len("Zoë Console")])
		p.do(chromedp.Click(chromedp.CSS("#find-results a")))
		p.waitFor("!document.getElementById('user-section').hidden && document.getElementById('user-name').textContent === 'Zoë Console'")
		require.Equal(t, "/console/users/"+id, eval[string](p, "location.pathname"))
		require.Equal(t, "0.00", p.text("user-balance"))
	})

	t.Run("find a user by id", func(t *testing.T) {
		p.t = t
		p.do(chromedp.Navigate(p.base+"/console"), chromedp.WaitVisible(chromedp.CSS("#find")))
		p.do(chromedp.SendKeys(chromedp.CSS("#find"), fmt.Sprint(other["id"])), chromedp.Click(chromedp.CSS("#find-form button")))
		p.waitFor("document.getElementById('user-name').textContent === 'Zed Other'")
	})

	// The deep link opens the user's page directly.
	p.do(chromedp.Navigate(p.base + "/console/users/" + id))
	p.waitFor("document.getElementById('user-name').textContent === 'Zoë Console' && document.getElementById('chart').dataset.points === '200'")

	var deposit string
	t.Run("post deposits and withdrawals through the form", func(t *testing.T) {
		p.t = t
		var status string
		status, deposit = p.post("DEPOSIT", "100.00", "2023-01-01T00:00:00")
		require.Equal(t, "200", status)
		status, _ = p.post("DEPOSIT", "25.5", "2023-02-01T00:00:00")
		require.Equal(t, "200", status)
		status, _ = p.post("WITHDRAW", "30", "2023-03-01T00:00:00")
		require.Equal(t, "200", status)
		p.waitFor("document.getElementById('user-balance').textContent === '95.50'")
		p.waitFor("document.querySelectorAll('#history-table tbody tr[data-status=APPLIED]').length === 3")
	})

	t.Run("the chart's points and hover show exact balances", func(t *testing.T) {
		p.t = t
		p.do(setValue("range-from", "2022-12-31T00:00:00"), setValue("range-to", "2023-03-31T00:00:00"),
			chromedp.Click(chromedp.CSS("#range-form button[type=submit]")))
		p.waitFor("document.getElementById('chart-status').textContent.includes('2022-12-31 00:00:00 UTC')")
		balances := eval[[]string](p, "[...document.querySelectorAll('#chart-table tbody tr td:nth-child(2)')].map(td => td.textContent)")
		require.Len(t, balances, 200)
		require.Equal(t, "0.00", balances[0])
		require.Equal(t, "95.50", balances[199])
		require.Contains(t, balances, "100.00")
		require.Contains(t, balances, "125.50")
		require.Equal(t, 1, eval[int](p, "document.querySelectorAll('#chart canvas').length"), "uPlot drew the chart")
		// The last point, then one step back with the keyboard.
		require.Contains(t, p.text("chart-hover"), "balance 95.50; set by WITHDRAW 30.00 at 2023-03-01 00:00:00 UTC")
		p.do(chromedp.Focus(chromedp.CSS("#chart-point")), chromedp.KeyEvent(kb.ArrowLeft))
		p.waitFor("document.getElementById('chart-point').value === '198'")
		require.Contains(t, p.text("chart-hover"), "balance 95.50")
		// The mouse over the chart's left edge: before the first deposit.
		box := eval[[]float64](p, "(() => { const r = document.querySelector('#chart .u-over').getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
		p.do(chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, box[0]+2, box[1]+box[3]/2))
		p.waitFor("document.getElementById('chart-hover').textContent.includes('before the first transaction')")
		require.Contains(t, p.text("chart-hover"), "balance 0.00")
		p.do(chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, box[0]+box[2]*0.5, box[1]+box[3]/2)) // mid-February
		p.waitFor("document.getElementById('chart-hover').textContent.includes('balance 125.50; set by DEPOSIT 25.50')")
	})

	t.Run("send again shows the replay", func(t *testing.T) {
		p.t = t
		p.do(chromedp.Evaluate[chromedp.Void]("document.getElementById('post-facts').remove()"), chromedp.Click(chromedp.CSS("#post-again")))
		p.waitFor("document.getElementById('post-facts')")
		facts := p.text("post-facts")
		require.Equal(t, "true", eval[string](p, "document.getElementById('post-facts').dataset.replayed"), facts)
		require.Contains(t, facts, "Idempotent-Replayed: true")
		require.Contains(t, facts, "the same answer as the first, byte for byte")
		require.Contains(t, facts, "status 200")
		require.Equal(t, "95.50", p.text("user-balance"), "a replay moves nothing")
	})

	t.Run("a refusal is explained and marked in the history", func(t *testing.T) {
		p.t = t
		status, uid := p.post("WITHDRAW", "1000.00", "")
		require.Equal(t, "402", status)
		require.Contains(t, p.text("post-result"), "Refused, insufficient funds (402)")
		p.waitFor("document.querySelector('#history-table tr.refused[data-uid=\"" + uid + "\"]')")
		row := eval[string](p, "document.querySelector('#history-table tr.refused').textContent")
		require.Contains(t, row, "REFUSED: insufficient funds")
		status, _ = p.post("DEPOSIT", "0.001", "")
		require.Equal(t, "422", status)
		require.Contains(t, p.text("post-result"), "Not accepted (422, amount)")
		require.NotEmpty(t, deposit)
	})

	t.Run("balance at a picked instant is the API's", func(t *testing.T) {
		p.t = t
		for _, at := range []string{"2023-02-15T12:00:00", "2022-06-01T00:00:00", "2023-03-01T00:00:00"} {
			p.do(chromedp.Evaluate[chromedp.Void]("delete document.getElementById('at-result').dataset.balance"),
				setValue("at", at), chromedp.Click(chromedp.CSS("#at-form button")))
			p.waitFor("document.getElementById('at-result').dataset.balance")
			status, want := p.api("GET", "/v1/user/"+id+"/balance?date="+at, "", "")
			require.Equal(t, 200, status)
			require.Equal(t, want["balance"], eval[string](p, "document.getElementById('at-result').dataset.balance"), at)
		}
	})

	t.Run("a new event appears in the panel, filtered by user", func(t *testing.T) {
		p.t = t
		p.waitFor("document.getElementById('events').dataset.following === 'true'")
		p.do(setValue("events-user", id))
		before := eval[int](p, "document.querySelectorAll('#events li:not([hidden])').length")
		status, _ := p.api("POST", "/v1/transaction", "", `{"uid": "`+uuid.NewString()+`", "user_id": `+id+`, "type": "DEPOSIT", "amount": "7.77"}`)
		require.Equal(t, 200, status)
		_, _ = p.api("POST", "/v1/transaction", "", `{"uid": "`+uuid.NewString()+`", "user_id": `+fmt.Sprint(other["id"])+`, "type": "DEPOSIT", "amount": "1"}`)
		p.waitFor(fmt.Sprintf("document.querySelectorAll('#events li:not([hidden])').length > %d && document.querySelector('#events li:not([hidden])').textContent.includes('DEPOSIT 7.77')", before))
		p.waitFor("document.querySelector('#events li[data-subject=\"users/" + fmt.Sprint(other["id"]) + "\"]')")
		require.Equal(t, 0, eval[int](p, "document.querySelectorAll('#events li:not([hidden]):not([data-subject=\"users/"+id+"\"])').length"), "the filter hides other users")
	})

	t.Run("readable at phone width", func(t *testing.T) {
		p.t = t
		p.do(chromedp.EmulateViewport(375, 800))
		p.waitFor("document.documentElement.scrollWidth <= 375")
		p.do(chromedp.EmulateViewport(1280, 1000))
	})

	if *updateScreenshot {
		t.Run("screenshot", func(t *testing.T) { screenshot(t) })
	}
}

// With tokens on, the console asks for one; a read token sees no form, a write token does.
// On Citus the feed is per user: the events panel, refused the global feed, follows the user
// named in its filter.
func TestConsoleEventsOnCitus(t *testing.T) {
	pgtest.RequireCitus(t)
	p := openConsole(t)
	status, user := p.api("POST", "/v1/user", "", `{"name": "Cita Console"}`)
	require.Equal(t, 201, status)
	id := fmt.Sprint(user["id"])
	p.do(chromedp.Navigate(p.base + "/console/users/" + id))
	p.waitFor("document.getElementById('events-status').textContent.includes('enter a user id')")
	p.do(setValue("events-user", id))
	p.waitFor("document.getElementById('events-status').textContent === 'Following user " + id + ": new events appear as they commit.'")
	status, _ = p.api("POST", "/v1/transaction", "", `{"uid": "`+uuid.NewString()+`", "user_id": `+id+`, "type": "DEPOSIT", "amount": "7.77"}`)
	require.Equal(t, 200, status)
	p.waitFor("document.querySelector('#events li:not([hidden])') && document.querySelector('#events li:not([hidden])').textContent.includes('DEPOSIT 7.77')")
}

func TestConsoleTokens(t *testing.T) {
	t.Parallel()
	const reader, writer = "read-token-0123456789", "write-token-0123456789"
	p := openConsole(t, httpapi.WithTokens([]httpapi.Token{{Secret: reader, Scope: httpapi.ScopeRead}, {Secret: writer, Scope: httpapi.ScopeWrite}}))
	status, user := p.api("POST", "/v1/user", writer, `{"name": "Tokened"}`)
	require.Equal(t, 201, status)
	id := fmt.Sprint(user["id"])

	p.do(chromedp.Navigate(p.base + "/console/users/" + id))
	p.waitFor("!document.getElementById('token-section').hidden")
	require.True(t, eval[bool](p, "document.getElementById('user-section').hidden"), "nothing is shown before a token")

	p.do(chromedp.SendKeys(chromedp.CSS("#token"), "wrong-token-0123456789"), chromedp.Click(chromedp.CSS("#token-form button")))
	p.waitFor("document.getElementById('token-error').textContent.includes('not accepted')")

	p.do(chromedp.SendKeys(chromedp.CSS("#token"), reader), chromedp.Click(chromedp.CSS("#token-form button")))
	p.waitFor("document.getElementById('user-name').textContent === 'Tokened'")
	require.Contains(t, p.text("access"), "may only read")
	require.True(t, eval[bool](p, "document.getElementById('post-section').hidden"), "a read token sees no post form")
	require.Equal(t, reader, eval[string](p, "sessionStorage.getItem('tally-token')"))

	p.do(chromedp.Evaluate[chromedp.Void]("sessionStorage.setItem('tally-token', "+jsString(writer)+")"), chromedp.Reload())
	p.waitFor("document.getElementById('user-name').textContent === 'Tokened' && document.getElementById('access').textContent.includes('read and write')")
	require.False(t, eval[bool](p, "document.getElementById('post-section').hidden"), "a write token sees the form")
	_, users := p.api("GET", "/v1/users?name=", writer, "")
	require.Len(t, users["items"], 1, "learning the scope created no user")
}

// screenshot writes docs/img/console.png: Vasya of the demo data, over the demo's year.
// Run: go test ./web -run 'TestConsole$/screenshot' -update-screenshot
func screenshot(t *testing.T) {
	p := openConsole(t)
	demo, err := os.ReadFile("../sql_data/demo.sql")
	require.NoError(t, err)
	script := strings.Replace(string(demo), `\set ON_ERROR_STOP on`, "", 1)
	_, err = p.db.Pool().Exec(context.Background(), script)
	require.NoError(t, err)
	p.do(chromedp.EmulateViewport(1280, 1400), chromedp.Navigate(p.base+"/console/users/1"))
	p.waitFor("document.getElementById('chart').dataset.points === '200' && document.querySelectorAll('#history-table tbody tr').length > 0 && document.getElementById('events').dataset.following === 'true'")
	p.do(setValue("range-from", "2021-11-01T00:00:00"), setValue("range-to", "2022-11-01T00:00:00"),
		chromedp.Click(chromedp.CSS("#range-form button[type=submit]")))
	p.waitFor("document.getElementById('chart-status').textContent.includes('2022-11-01 00:00:00 UTC') && document.querySelectorAll('#events li').length >= 20")
	p.do(setValue("at", "2022-05-05T00:00:00"), chromedp.Click(chromedp.CSS("#at-form button")))
	p.waitFor("document.getElementById('at-result').dataset.balance === '2904.13'")
	box := eval[[]float64](p, "(() => { const r = document.querySelector('#chart .u-over').getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
	p.do(chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, box[0]+box[2]*0.45, box[1]+box[3]/2))
	p.waitFor("document.getElementById('chart-hover').textContent.includes('set by')")
	ctx, cancel := context.WithTimeout(p.ctx, 60*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	require.NoError(t, err)
	require.NoError(t, os.WriteFile("../docs/img/console.png", png, 0o644))
}
