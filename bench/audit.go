package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-ledger/tally/ledger"
)

// AuditResult is what --verify checked and what it found.
type AuditResult struct {
	Checks     []CheckResult `json:"checks"`
	Violations []Violation   `json:"violations"`
}

// CheckResult is one check of the audit.
type CheckResult struct {
	Name       string `json:"name"`
	Checked    int    `json:"checked"`
	Violations int    `json:"violations"`
	Note       string `json:"note,omitempty"`
}

// maxPrinted bounds the violations printed per check; --json keeps them all.
const maxPrinted = 20

func (a *AuditResult) print(w io.Writer) {
	fmt.Fprintln(w, "\nverify:")
	for _, c := range a.Checks {
		verdict := "ok  "
		if c.Violations > 0 {
			verdict = "FAIL"
		}
		fmt.Fprintf(w, "  %s %s: %d checked", verdict, c.Name, c.Checked)
		if c.Violations > 0 {
			fmt.Fprintf(w, ", %d violation(s)", c.Violations)
		}
		if c.Note != "" {
			fmt.Fprintf(w, " (%s)", c.Note)
		}
		fmt.Fprintln(w)
	}
	printed := map[string]int{}
	for _, v := range a.Violations {
		if printed[v.Check]++; printed[v.Check] <= maxPrinted {
			fmt.Fprintln(w, "VIOLATION", v)
		}
	}
	if len(a.Violations) == 0 {
		fmt.Fprintf(w, "verify: all %d checks passed\n", len(a.Checks))
	}
}

// auditor runs the checks inside one read-only, repeatable-read transaction, so that every
// query sees the same snapshot.
type auditor struct {
	b      *bench
	tx     pgx.Tx
	users  []int64
	result *AuditResult
	// rows are every stored transaction of the run's users: uid → user and status.
	rows map[string]storedStatus
}

type storedStatus struct {
	userID int64
	status string
}

// storedRow is a transactions row as the write path stored it.
type storedRow struct {
	userID         int64
	typ            string
	amount         int64
	ts             time.Time
	timestampGiven bool
	status         string
	responseStatus int
	responseBody   []byte
}

// audit checks the database and the API against the writes the run made.
func (b *bench) audit(ctx context.Context, writes []writeRecord) (*AuditResult, error) {
	conn, err := pgx.Connect(ctx, b.cfg.databaseURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only; nothing to undo
	a := &auditor{b: b, tx: tx, users: b.users, result: &AuditResult{}}
	for _, step := range []func(context.Context, []writeRecord) error{
		a.checkStored, a.checkResend, a.checkBalances, a.checkBalancesAt, a.checkChain, a.checkOutbox, a.checkStream,
	} {
		if err := step(ctx, writes); err != nil {
			return nil, err
		}
	}
	return a.result, nil
}

// check starts a check; its violations are counted as they are reported.
func (a *auditor) check(name string) *CheckResult {
	a.result.Checks = append(a.result.Checks, CheckResult{Name: name})
	return &a.result.Checks[len(a.result.Checks)-1]
}

func (a *auditor) violate(c *CheckResult, uid string, userID int64, format string, args ...any) {
	c.Violations++
	a.result.Violations = append(a.result.Violations, Violation{Check: c.Name, UID: uid, UserID: userID, Detail: fmt.Sprintf(format, args...)})
}

// uidChunk bounds the uids passed in one query.
const uidChunk = 5000

// checkStored is check 1: every acknowledged write is stored once, as sent, APPLIED for a 200
// and REJECTED for a 402, with the first answer byte for byte; and, when the run created its
// users, nothing is stored for them that the run did not send.
func (a *auditor) checkStored(ctx context.Context, writes []writeRecord) error {
	c := a.check("acknowledged writes stored once, as sent, with the first answer")
	stored := map[string]storedRow{}
	for start := 0; start < len(writes); start += uidChunk {
		chunk := writes[start:min(start+uidChunk, len(writes))]
		uids := make([]string, len(chunk))
		for i, w := range chunk {
			uids[i] = w.UID
		}
		rows, err := a.tx.Query(ctx, `SELECT uid::text, user_id, type, amount, ts, timestamp_given, status,
			response_status, response_body FROM transactions WHERE uid = ANY($1::text[]::uuid[])`, uids)
		if err != nil {
			return err
		}
		for rows.Next() {
			var uid string
			var r storedRow
			if err := rows.Scan(&uid, &r.userID, &r.typ, &r.amount, &r.ts, &r.timestampGiven, &r.status,
				&r.responseStatus, &r.responseBody); err != nil {
				rows.Close()
				return err
			}
			stored[uid] = r
		}
		if err := rows.Err(); err != nil {
			return err
		}
	}
	var unknownStored, unknown int
	for _, w := range writes {
		r, ok := stored[w.UID]
		if !w.acknowledged() {
			unknown++
			if ok {
				unknownStored++
			}
			continue
		}
		c.Checked++
		want := map[int]string{http.StatusOK: "APPLIED", http.StatusPaymentRequired: "REJECTED"}[w.Status]
		switch {
		case !ok:
			a.violate(c, w.UID, w.UserID, "answered %d but not in the transactions table", w.Status)
		case r.userID != w.UserID || r.typ != w.Type || r.amount != w.Amount:
			a.violate(c, w.UID, w.UserID, "sent user %d %s %s, stored user %d %s %s", w.UserID, w.Type,
				ledger.Amount(w.Amount), r.userID, r.typ, ledger.Amount(r.amount))
		case r.timestampGiven != (w.Timestamp != nil) || (w.Timestamp != nil && !w.Timestamp.Equal(r.ts)):
			a.violate(c, w.UID, w.UserID, "sent timestamp %v, stored %s (given: %v)", w.Timestamp, ledger.FormatTime(r.ts), r.timestampGiven)
		case r.status != want:
			a.violate(c, w.UID, w.UserID, "answered %d but stored as %s", w.Status, r.status)
		case r.responseStatus != w.Status || !bytes.Equal(r.responseBody, w.Body):
			a.violate(c, w.UID, w.UserID, "the stored answer (%d %s) is not the first answer (%d %s)", r.responseStatus,
				bytes.TrimSpace(r.responseBody), w.Status, bytes.TrimSpace(w.Body))
		}
	}
	rows, err := a.tx.Query(ctx, "SELECT uid::text, user_id, status FROM transactions WHERE user_id = ANY($1)", a.users)
	if err != nil {
		return err
	}
	a.rows = map[string]storedStatus{}
	for rows.Next() {
		var uid string
		var s storedStatus
		if err := rows.Scan(&uid, &s.userID, &s.status); err != nil {
			rows.Close()
			return err
		}
		a.rows[uid] = s
	}
	if err := rows.Err(); err != nil {
		return err
	}
	c.Note = fmt.Sprintf("uid is the primary key; of %d writes without a final answer, %d took effect", unknown, unknownStored)
	if a.b.usersCreated {
		sent := make(map[string]bool, len(writes))
		for _, w := range writes {
			sent[w.UID] = true
		}
		for uid, s := range a.rows {
			if !sent[uid] {
				a.violate(c, uid, s.userID, "stored for a user of this run, but never sent")
			}
		}
		c.Note += fmt.Sprintf("; none of the %d rows of this run's users is unsent", len(a.rows))
	}
	return nil
}

// checkResend is part of check 1: a sample of refused uids sent again is refused again, and a
// sample of applied ones is answered as the first time, both marked replayed.
func (a *auditor) checkResend(ctx context.Context, writes []writeRecord) error {
	c := a.check("refused and applied uids sent again get the first answer, replayed")
	var refused, applied []writeRecord
	for _, w := range writes {
		switch w.Status {
		case http.StatusPaymentRequired:
			refused = append(refused, w)
		case http.StatusOK:
			applied = append(applied, w)
		}
	}
	sample := append(pick(refused, a.b.cfg.verifySample), pick(applied, a.b.cfg.verifySample)...)
	var mu sync.Mutex
	err := a.b.parallel(ctx, len(sample), func(i int) error {
		w := sample[i]
		res, _, err := a.b.transact(ctx, w)
		mu.Lock()
		defer mu.Unlock()
		c.Checked++
		if res.Status == 0 {
			a.violate(c, w.UID, w.UserID, "sent again: %v", err)
		} else if v := checkReplay(w, res); v != "" {
			a.violate(c, w.UID, w.UserID, "sent again: %s", v)
		}
		return nil
	})
	c.Note = fmt.Sprintf("%d refused of %d, %d applied of %d", min(len(refused), a.b.cfg.verifySample), len(refused),
		min(len(applied), a.b.cfg.verifySample), len(applied))
	return err
}

// pick returns up to n of writes at random.
func pick(writes []writeRecord, n int) []writeRecord {
	if len(writes) <= n {
		return writes
	}
	out := make([]writeRecord, n)
	for i, j := range rand.Perm(len(writes))[:n] {
		out[i] = writes[j]
	}
	return out
}

// signedAmount is a row's effect on the balance, in SQL.
const signedAmount = "CASE type WHEN 'DEPOSIT' THEN amount ELSE -amount END"

// checkBalances is check 2: every user's stored balance, and the balance the API reports,
// equal the sum of the user's applied transactions.
func (a *auditor) checkBalances(ctx context.Context, _ []writeRecord) error {
	c := a.check("users.balance and GET balance equal the sum of APPLIED transactions")
	rows, err := a.tx.Query(ctx, `SELECT u.id, u.balance,
			coalesce(sum(`+signedAmount+`) FILTER (WHERE t.status = 'APPLIED'), 0)::bigint
		FROM users u LEFT JOIN transactions t ON t.user_id = u.id
		WHERE u.id = ANY($1) GROUP BY u.id`, a.users)
	if err != nil {
		return err
	}
	type sums struct{ stored, sum int64 }
	found := map[int64]sums{}
	for rows.Next() {
		var id int64
		var s sums
		if err := rows.Scan(&id, &s.stored, &s.sum); err != nil {
			rows.Close()
			return err
		}
		found[id] = s
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var mu sync.Mutex
	return a.b.parallel(ctx, len(a.users), func(i int) error {
		id := a.users[i]
		api, apiErr := a.b.balance(ctx, id, nil)
		mu.Lock()
		defer mu.Unlock()
		c.Checked++
		s, ok := found[id]
		switch {
		case !ok:
			a.violate(c, "", id, "no such user in the users table")
		case s.stored != s.sum:
			a.violate(c, "", id, "users.balance %s, the sum of its applied transactions %s", ledger.Amount(s.stored), ledger.Amount(s.sum))
		case apiErr != nil:
			a.violate(c, "", id, "read the balance: %v", apiErr)
		case api != s.sum:
			a.violate(c, "", id, "the API says %s, the sum of its applied transactions is %s", ledger.Amount(api), ledger.Amount(s.sum))
		}
		return nil
	})
}

// checkBalancesAt is part of check 2: for a sample of users, the API's balance at a past
// instant equals the sum of the applied transactions up to it.
func (a *auditor) checkBalancesAt(ctx context.Context, _ []writeRecord) error {
	c := a.check("GET balance?date= equals the sum of APPLIED transactions up to the date")
	type probe struct {
		user int64
		at   time.Time
		want int64
	}
	probes := make([]probe, 0, a.b.cfg.verifySample)
	for _, i := range rand.Perm(len(a.users))[:min(len(a.users), a.b.cfg.verifySample)] {
		p := probe{user: a.users[i]}
		var first, last *time.Time
		if err := a.tx.QueryRow(ctx, "SELECT min(ts), max(ts) FROM transactions WHERE user_id = $1 AND status = 'APPLIED'",
			p.user).Scan(&first, &last); err != nil {
			return err
		}
		if first == nil {
			continue
		}
		p.at = first.Add(time.Duration(rand.Int64N(int64(last.Sub(*first)) + 1))).UTC().Truncate(time.Microsecond)
		if err := a.tx.QueryRow(ctx, `SELECT coalesce(sum(`+signedAmount+`), 0)::bigint FROM transactions
			WHERE user_id = $1 AND status = 'APPLIED' AND ts <= $2`, p.user, p.at).Scan(&p.want); err != nil {
			return err
		}
		probes = append(probes, p)
	}
	var mu sync.Mutex
	return a.b.parallel(ctx, len(probes), func(i int) error {
		p := probes[i]
		got, err := a.b.balance(ctx, p.user, &p.at)
		mu.Lock()
		defer mu.Unlock()
		c.Checked++
		if err != nil {
			a.violate(c, "", p.user, "read the balance at %s: %v", ledger.FormatTime(p.at), err)
		} else if got != p.want {
			a.violate(c, "", p.user, "at %s the API says %s, the applied transactions sum to %s", ledger.FormatTime(p.at), ledger.Amount(got), ledger.Amount(p.want))
		}
		return nil
	})
}

// checkChain is check 3: along each user's timeline, in (ts, seq) order, every stored
// balance_after equals the running sum, which never drops below zero. A user is reported once,
// at the row where its timeline first goes wrong: one missing or wrong row puts every later
// row off too.
func (a *auditor) checkChain(ctx context.Context, _ []writeRecord) error {
	c := a.check("balance_after along each timeline equals the running sum, never below zero")
	if err := a.tx.QueryRow(ctx, "SELECT count(*) FROM transactions WHERE status = 'APPLIED' AND user_id = ANY($1)",
		a.users).Scan(&c.Checked); err != nil {
		return err
	}
	rows, err := a.tx.Query(ctx, `SELECT DISTINCT ON (user_id) uid::text, user_id, balance_after, running,
			count(*) OVER (PARTITION BY user_id)
		FROM (
			SELECT uid, user_id, balance_after, ts, seq, (sum(`+signedAmount+`)
				OVER (PARTITION BY user_id ORDER BY ts, seq ROWS UNBOUNDED PRECEDING))::bigint AS running
			FROM transactions WHERE status = 'APPLIED' AND user_id = ANY($1)) timeline
		WHERE balance_after IS DISTINCT FROM running OR running < 0
		ORDER BY user_id, ts, seq`, a.users)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var uid string
		var user, after, running, off int64
		if err := rows.Scan(&uid, &user, &after, &running, &off); err != nil {
			return err
		}
		detail := fmt.Sprintf("balance_after %s, the running sum %s", ledger.Amount(after), ledger.Amount(running))
		if running < 0 {
			detail = fmt.Sprintf("the running balance is %s here", ledger.Amount(running))
		}
		a.violate(c, uid, user, "%s; %d row(s) of this timeline are off from here on", detail, off)
	}
	return rows.Err()
}

// checkOutbox is check 4: every stored transaction of the run's users has exactly one event
// of its outcome in the outbox (transaction.applied or transaction.rejected, its uid in
// data.uid) and none of the other, and no such event names a uid that is not stored so.
// The relay prunes published events after its retention; when it has run (relay_cursor has
// a row), users with fewer events than their event_seq are skipped as pruned. Otherwise every
// user must have exactly event_seq events.
func (a *auditor) checkOutbox(ctx context.Context, _ []writeRecord) error {
	var hasOutbox, hasCursor bool
	if err := a.tx.QueryRow(ctx, "SELECT to_regclass('outbox') IS NOT NULL, to_regclass('relay_cursor') IS NOT NULL").
		Scan(&hasOutbox, &hasCursor); err != nil {
		return err
	}
	if !hasOutbox {
		return nil
	}
	c := a.check("one transaction.applied (or .rejected) event per transaction in the outbox")
	pruning := false
	if hasCursor {
		if err := a.tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM relay_cursor)").Scan(&pruning); err != nil {
			return err
		}
	}
	rows, err := a.tx.Query(ctx, `SELECT u.id, u.event_seq, count(o.position) FROM users u
		LEFT JOIN outbox o ON o.user_id = u.id WHERE u.id = ANY($1) GROUP BY u.id`, a.users)
	if err != nil {
		return err
	}
	skipped := map[int64]bool{}
	for rows.Next() {
		var id, seq, events int64
		if err := rows.Scan(&id, &seq, &events); err != nil {
			rows.Close()
			return err
		}
		switch {
		case events == seq:
		case pruning && events < seq:
			skipped[id] = true
		default:
			a.violate(c, "", id, "%d events in the outbox, users.event_seq is %d", events, seq)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	rows, err = a.tx.Query(ctx, `SELECT user_id, coalesce(event->'data'->>'uid', ''), type, count(*) FROM outbox
		WHERE user_id = ANY($1) AND type IN ('transaction.applied', 'transaction.rejected')
		GROUP BY 1, 2, 3`, a.users)
	if err != nil {
		return err
	}
	type eventCounts struct{ applied, rejected int64 }
	events := map[string]eventCounts{}
	for rows.Next() {
		var user, n int64
		var uid, typ string
		if err := rows.Scan(&user, &uid, &typ, &n); err != nil {
			rows.Close()
			return err
		}
		e := events[uid]
		if typ == "transaction.applied" {
			e.applied = n
		} else {
			e.rejected = n
		}
		events[uid] = e
		if _, ok := a.rows[uid]; !ok && !skipped[user] {
			a.violate(c, uid, user, "%d %s event(s) for a uid that is not in the transactions table", n, typ)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for uid, s := range a.rows {
		if skipped[s.userID] {
			continue
		}
		c.Checked++
		e := events[uid]
		want := eventCounts{applied: 1}
		if s.status == "REJECTED" {
			want = eventCounts{rejected: 1}
		}
		if e != want {
			a.violate(c, uid, s.userID, "stored as %s, with %d transaction.applied and %d transaction.rejected events",
				s.status, e.applied, e.rejected)
		}
	}
	switch {
	case len(skipped) > 0:
		c.Note = fmt.Sprintf("%d users skipped: the relay has pruned some of their events", len(skipped))
	case pruning:
		c.Note = "the relay has run, but pruned none of these users' events"
	default:
		c.Note = "no relay cursor, so nothing pruned: every user has exactly event_seq events"
	}
	return nil
}
