package postgres

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/tally-ledger/tally/ledger"
)

// The write path records transaction requests in three steps over one pipelined database
// transaction: load the state of every user the requests name under their locks (one round
// trip), decide each request in arrival order with ledger.Decide, carrying each user's state
// forward in memory, and write every row, stored answer, event and user update in one
// statement with the COMMIT (the second round trip). A request alone is a batch of one;
// batcher.go groups concurrent requests into larger batches. A batch whose users this
// instance last wrote or read is decided before anything is read, and written with its
// COMMIT in one round trip (guess.go).

// A user's writes are serialized by an advisory lock on the user's key. Taking it gives the
// transaction no id, and the reads under it lock no row; the transaction gets its id at its
// first write, so each write to a user gets its transaction id only once the previous one
// committed, and the outbox's transaction order is each user's sequence order. A guessed
// batch takes its users' locks in writeSQL itself, possibly after its first write; writeSQL
// then refuses it if a user whose lock it took changed since the guess, and a user that did
// not change has no event the order could break.

// userLockKeySQL is the advisory lock key of user id: the id's high and low halves as two
// int4s. That key space is apart from the one-bigint space of the migration lock and the
// relay lease, so no user id can ever wait on either.
const userLockKeySQL = "(id >> 32)::int4, id::bit(32)::int4"

// waitForUsersSQL queues on each user's lock, in the order given (ascending ids). Only a
// request recorded alone waits, under its own request's context.
const waitForUsersSQL = `SELECT pg_advisory_xact_lock(` + userLockKeySQL + `) FROM unnest($1::bigint[]) AS id`

// genericPlansSQL makes the single-node write path's prepared statements run cached generic
// plans that reach every table through an index. Under the default plan_cache_mode
// PostgreSQL rarely uses the generic plan of a statement with an array parameter (it is costed
// for an array of ten), so it planned every statement of every write, a quarter of its
// processor time per write (docs/performance.md). A generic plan, though, is made once for the
// table as it is then: made while a table is small and not yet analyzed, it would scan the
// table rather than use its index. Every statement of the write path reads rows by key or by
// a key's range, so sequential scans are ruled out for them. set_config(..., true) lasts
// until the transaction ends, so the pool's other queries keep the defaults. Not on Citus:
// there a generic plan of a statement Citus cannot route without its parameters' values (the
// back-dating reads) fails, and Citus caches its router plans itself.
const genericPlansSQL = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true), set_config('enable_seqscan', 'off', true)"

// tryUsersSQL takes each user's lock if it is free and lists the users whose lock is busy. A
// batch never waits on a user lock: waiting would hold every other member, and the worker,
// behind one slow user. Members whose user is busy are recorded alone, by their callers.
const tryUsersSQL = `SELECT id FROM unnest($1::bigint[]) AS id WHERE NOT pg_try_advisory_xact_lock(` + userLockKeySQL + `)`

// readUsersSQL reads what Decide needs of the batch's users; those whose lock is busy are
// read too, and their members recorded alone. Read committed gives it, and the uid lookup
// after it, a snapshot taken once the user locks are held, so they see a write or a duplicate
// uid that committed before. No row is locked: the advisory lock keeps every other tally
// writer off the row, and writeSQL's UPDATE locks it.
const readUsersSQL = `SELECT id, balance, last_seq, last_ts, event_seq, clock_timestamp() FROM users WHERE id = ANY($1)`

const findUIDsSQL = "SELECT " + txColumns + ", response_status, response_body FROM transactions WHERE uid = ANY($1)"

// backDatedStateSQL reads what a back-dated request needs beyond the user's row: the balance
// at its instant and the range of the later balances it would move.
const backDatedStateSQL = "SELECT " + balanceAtSQL + ", min(balance_after), max(balance_after) " +
	"FROM transactions WHERE user_id = $1 AND status = 'APPLIED' AND ts > $2"

// shiftLaterSQL moves every later applied transaction's balance by a back-dated one's amount.
// Decide checked that none goes negative; the CHECK constraint is the backstop.
const shiftLaterSQL = `UPDATE transactions SET balance_after = balance_after + $3
	WHERE user_id = $1 AND status = 'APPLIED' AND ts > $2`

// writeSQL stores a batch's transactions with their answers, their events and the users' new
// state in one statement: PostgreSQL's work per statement, not per row, is what a write
// mostly costs. Outbox positions follow the array order, which keeps each user's events in
// sequence order. The users are updated through `id = ANY`, an index probe per user: joined to
// an unnest instead, a thousand users were hash-joined against a scan of the whole table.
//
// It checks what the batch was decided against, and raises (tally_expect, SQLSTATE TL001)
// unless every user's row still holds everything the decision read of it (balance, last_seq,
// last_ts, event_seq: $24 to $27) and its lock is this transaction's (taken here if not yet:
// a busy user's row is skipped, never waited for), and unless a guessed clock ($28, NULL when
// the clock was read under the locks) lies within the database's last guessedClockWindow.
// After reads under the locks the check always holds; it is there for a batch decided from
// guess.go's copy. It returns the database's clock, which guess.go keeps.
const writeSQL = `WITH stored AS (
		INSERT INTO transactions (uid, user_id, seq, type, amount, ts, timestamp_given, status,
			reason, balance_after, response_status, response_body, created_at)
		SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
			$6::timestamptz[], $7::boolean[], $8::text[], $9::text[], $10::bigint[], $11::smallint[],
			$12::bytea[], $13::timestamptz[])),
	events AS (
		INSERT INTO outbox (id, user_id, user_seq, type, event)
		SELECT e.id, e.user_id, e.seq, e.type, e.body::json
		FROM unnest($14::uuid[], $15::bigint[], $16::bigint[], $17::text[], $18::text[]) AS e(id, user_id, seq, type, body)),
	updated AS (
		UPDATE users SET balance = ($20::bigint[])[array_position($19::bigint[], id)],
			last_seq = ($21::bigint[])[array_position($19::bigint[], id)],
			last_ts = ($22::timestamptz[])[array_position($19::bigint[], id)],
			event_seq = ($23::bigint[])[array_position($19::bigint[], id)]
		WHERE id = ANY($19::bigint[])
			AND balance = ($24::bigint[])[array_position($19::bigint[], id)]
			AND last_seq = ($25::bigint[])[array_position($19::bigint[], id)]
			AND last_ts IS NOT DISTINCT FROM ($26::timestamptz[])[array_position($19::bigint[], id)]
			AND event_seq = ($27::bigint[])[array_position($19::bigint[], id)]
			AND pg_try_advisory_xact_lock(` + userLockKeySQL + `)
		RETURNING id)
	SELECT tally_expect((SELECT count(*) FROM updated) = cardinality($19::bigint[])
		AND ($28::timestamptz IS NULL OR $28 BETWEEN clock_timestamp() - interval '` + guessedClockWindow + `' AND clock_timestamp())),
		clock_timestamp()`

// guessedClockWindow is how far in the database's past a guessed clock may lie. The estimate
// trails the database by about the fastest recent round trip (guess.go); a clock further
// behind (this machine's clock stepped, or the process stalled) is refused, and the batch
// reads the clock instead.
const guessedClockWindow = "1 second"

// guessMissed tells the errors with which the database refuses a guessed batch: a row not as
// guessed (tally_expect), or a uid already stored.
func guessMissed(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "TL001" || pgErr.Code == "23505")
}

// On Citus (db.Distributed) a statement over an array of users reaches every shard, and an
// INSERT ... SELECT FROM unnest is planned through the coordinator. The write path there
// records each request alone, with the scalar statements below, each of which Citus routes to
// one shard: the user's (users, transactions and outbox are colocated by user) or the uid's
// (transaction_uids). A write touches both, so it commits with two-phase commit when they lie
// on two workers. The user's row lock alone serializes the user's writes: the advisory lock's
// other duty, ordering the single-node outbox by transaction id, has no meaning across nodes.

// lockUserRowSQL locks one user's row and reads what Decide needs.
const lockUserRowSQL = `SELECT id, balance, last_seq, last_ts, event_seq, clock_timestamp() FROM users
	WHERE id = $1 FOR UPDATE`

// findUserUIDSQL reads a uid stored for this user. Under the user's row lock it sees every
// earlier write of the user, committed on the user's worker before the lock came free.
const findUserUIDSQL = "SELECT " + txColumns + ", response_status, response_body FROM transactions WHERE user_id = $1 AND uid = $2"

// findUIDOwnerSQL finds the user a uid was stored for, so that a uid used for another user is
// an idempotency conflict. One committing on the uid's worker meanwhile is caught by
// insertUIDSQL's unique violation, and the retry reads it here.
const findUIDOwnerSQL = "SELECT user_id FROM transaction_uids WHERE uid = $1"

const insertUIDSQL = "INSERT INTO transaction_uids (uid, user_id) VALUES ($1, $2)"

const insertTransactionSQL = `INSERT INTO transactions (uid, user_id, seq, type, amount, ts, timestamp_given,
	status, reason, balance_after, response_status, response_body, created_at)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`

// insertEventSQL stores one event; the write path and user creation use it on every layout.
const insertEventSQL = "INSERT INTO outbox (id, user_id, user_seq, type, event) VALUES ($1, $2, $3, $4, $5::json)"

const updateUserSQL = "UPDATE users SET balance = $2, last_seq = $3, last_ts = $4, event_seq = $5 WHERE id = $1"

// writeRequest is one transaction request on its way through the write path, and, once a
// batch holding it committed, its answer.
type writeRequest struct {
	req    ledger.Request
	render func(ledger.Transaction) ledger.Reply

	out ledger.Outcome
	err error // the request's own refusal (not found, idempotency conflict) or the batch's failure
	// alone is set when the request cannot be decided inside a batch (it is back-dated against
	// its user's state there, or its user's lock is busy): its caller records it again alone,
	// waiting for the lock under its own context.
	alone bool

	// Set by the batcher.
	ctx      context.Context
	enqueued time.Time
	done     chan struct{}
}

// Apply records a transaction request exactly once. Under the user's locks it reads the state
// the rule needs, decides with ledger.Decide, and stores the row, its answer, its events and
// the new balance in one database transaction, usually together with concurrent requests
// (batcher.go). A uid seen before gets its first answer back, or an idempotency conflict if
// the body differs.
func (db *DB) Apply(ctx context.Context, req ledger.Request, render func(ledger.Transaction) ledger.Reply) (ledger.Outcome, error) {
	distributed, err := db.Distributed(ctx)
	if err != nil {
		return ledger.Outcome{}, dbErr(err)
	}
	w := &writeRequest{req: req, render: render}
	if db.batcher != nil && !distributed {
		if err := db.batcher.submit(ctx, w); err != nil {
			return ledger.Outcome{}, dbErr(err)
		}
		if !w.alone {
			return w.out, dbErr(w.err)
		}
		*w = writeRequest{req: req, render: render}
	}
	db.record(ctx, []*writeRequest{w}, true, distributed)
	return w.out, dbErr(w.err)
}

// record runs a batch to its end: every member gets an answer, an error, or alone. alone says
// the batch is one request recorded by its own caller, which waits for its user's lock and may
// back-date. An attempt that fails on a serialization failure or a deadlock is retried whole
// (retry). A unique violation means another transaction committed one of the uids first; the
// retry reads it and answers that member as a replay or a conflict, so its neighbours go on.
// A lost connection (or a server that refuses writes) is tried again on another connection,
// up to lostConnectionAttempts times: the new attempt reads the uids again under the users'
// locks, so if the lost attempt committed after all, every member gets its stored answer as a
// replay. When the database stays away, every member fails with 503. Any other failure could
// be one member's doing: the members are then recorded one by one, in arrival order, so that
// only the culprit fails.
//
// distributed selects the scalar statements Citus routes to one shard; only a request alone
// is recorded that way.
func (db *DB) record(ctx context.Context, batch []*writeRequest, alone, distributed bool) {
	var err error
	// What the members of an attempt that lost its connection were about to be answered.
	var unsent map[*writeRequest]ledger.Reply
	for lost := 1; ; lost++ {
		_, err = retry(ctx, true, func() (struct{}, error) {
			for _, w := range batch {
				w.out, w.err, w.alone = ledger.Outcome{}, nil, false
			}
			return struct{}{}, db.recordOnce(ctx, batch, alone, distributed)
		})
		if err == nil || lost == lostConnectionAttempts || !databaseLost(err) ||
			!sleep(ctx, time.Duration(lost)*20*time.Millisecond) {
			break
		}
		for _, w := range batch {
			if w.err == nil && !w.out.Replayed && w.out.Reply.Body != nil {
				if unsent == nil {
					unsent = map[*writeRequest]ledger.Reply{}
				}
				unsent[w] = w.out.Reply
			}
		}
	}
	if err == nil {
		// A lost attempt that committed after all is found stored by the next one: its answer
		// is this request's first, not a replay.
		for w, reply := range unsent {
			if w.out.Replayed && w.out.Reply.Status == reply.Status && bytes.Equal(w.out.Reply.Body, reply.Body) {
				w.out.Replayed = false
			}
		}
		return
	}
	if len(batch) == 1 || databaseLost(err) {
		for _, w := range batch {
			w.out, w.err = ledger.Outcome{}, err
		}
		return
	}
	for _, w := range batch {
		db.record(ctx, []*writeRequest{w}, false, distributed)
	}
}

// lostConnectionAttempts bounds the attempts at a batch that loses its connection: enough to
// ride over one broken pooled connection, few enough that a database that is down is answered
// 503 within a tenth of a second.
const lostConnectionAttempts = 3

// userState is a user's state, read under its lock or guessed, carried forward in memory
// through a batch.
type userState struct {
	ledger.UserState
	eventSeq int64 // the user's last event sequence number
	changed  bool
	// The row as read or guessed, which writeSQL checks.
	read rowState
}

// row is the user's row as this state would store it.
func (u *userState) row() rowState {
	return rowState{balance: u.Balance, lastSeq: u.LastSeq, eventSeq: u.eventSeq, lastTime: u.LastTime}
}

// rowState is what the write path reads of a user's row.
type rowState struct {
	balance           ledger.Amount
	lastSeq, eventSeq int64
	lastTime          time.Time
}

// state is the state a batch starts from at row r, deciding with the clock now.
func (r rowState) state(now time.Time) *userState {
	return &userState{UserState: ledger.UserState{Balance: r.balance, LastSeq: r.lastSeq, LastTime: r.lastTime, Now: now},
		eventSeq: r.eventSeq, read: r}
}

// loaded is what a batch's first round trip reads under its users' locks, or guessed.
type loaded struct {
	users  map[int64]*userState
	busy   map[int64]bool // users whose lock another transaction holds
	stored map[uuid.UUID]ledger.Outcome
}

// recordOnce is one attempt at a batch: a guessed batch in one round trip (guess.go), else,
// or if the guess missed, a batch read under its users' locks in a transaction of two round
// trips (three for a back-dated request alone).
func (db *DB) recordOnce(ctx context.Context, batch []*writeRequest, alone, distributed bool) error {
	if !alone && !distributed {
		if users, now := db.guesses.guess(batch); users != nil {
			done, err := db.recordGuessed(ctx, batch, users, now)
			if done {
				return err
			}
		}
	}
	state := &loaded{}
	var clock clockReading
	err := db.withPipelinedTx(ctx, func(tx *pipelinedTx) error {
		queueLoad := queueLoadState
		if distributed {
			queueLoad = queueLoadStateRouted
		}
		var q *pgx.Batch
		q, state = queueLoad(batch, alone)
		if err := tx.send(ctx, q, false); err != nil {
			return err
		}
		writes, err := db.decideBatch(ctx, tx, batch, state, alone)
		if err != nil {
			return err
		}
		return tx.send(ctx, writes.queue(&pgx.Batch{}, distributed, &clock), true)
	})
	switch {
	case err != nil:
		db.forgetGuesses(ctx, batch, err)
	case !distributed:
		// A busy user's row was read without its lock, and is about to change.
		for id := range state.busy {
			delete(state.users, id)
		}
		db.guesses.store(state.users, clock)
	}
	return err
}

// recordGuessed records batch decided against users, guess.go's copy of its users, in one
// round trip. It reports whether the batch is done: committed, failed, or left whole to its
// members' callers. When the database refused the guess, the members are reset, to be decided
// again from the rows.
func (db *DB) recordGuessed(ctx context.Context, batch []*writeRequest, users map[int64]*userState, now time.Time) (bool, error) {
	writes, err := db.decideBatch(ctx, nil, batch, &loaded{users: users}, false)
	if err != nil || writes.empty() {
		// Every member is recorded alone, by its caller: nothing to send.
		return true, err
	}
	writes.guessedNow = pgtype.Timestamptz{Time: now, Valid: true}
	var clock clockReading
	err = db.withPipelinedTx(ctx, func(tx *pipelinedTx) error {
		q := &pgx.Batch{}
		q.Queue(genericPlansSQL)
		return tx.send(ctx, writes.queue(q, false, &clock), true)
	})
	switch {
	case err == nil:
		db.guesses.outcome(true)
		db.metrics.guesses.WithLabelValues("committed").Inc()
		db.guesses.store(users, clock)
		return true, nil
	case guessMissed(err):
		db.guesses.outcome(false)
		db.metrics.guesses.WithLabelValues("missed").Inc()
		db.guesses.forget(batch, false)
		for _, w := range batch {
			w.out, w.err, w.alone = ledger.Outcome{}, nil, false
		}
		return false, nil
	default:
		db.forgetGuesses(ctx, batch, err)
		return true, err
	}
}

// forgetGuesses drops the copy of the batch's users after an attempt that failed with err:
// whether it committed or not, their rows are unknown. All users are dropped when the
// database was lost, unless the request's own context ended.
func (db *DB) forgetGuesses(ctx context.Context, batch []*writeRequest, err error) {
	db.guesses.forget(batch, databaseLost(err) && ctx.Err() == nil)
}

// databaseLost reports whether err says that the database was lost or refuses writes.
func databaseLost(err error) bool { return ledger.ErrorCode(dbErr(err)) == ledger.CodeUnavailable }

// decideBatch decides every member of batch in arrival order against state, and returns what
// the batch writes. A member whose user's lock is busy is marked alone. tx is used only by a
// back-dated request alone.
func (db *DB) decideBatch(ctx context.Context, tx *pipelinedTx, batch []*writeRequest, state *loaded, alone bool) (writeSet, error) {
	var writes writeSet
	seen := make(map[uuid.UUID]*writeRequest, len(batch))
	for _, w := range batch {
		if state.busy[w.req.UserID] {
			w.alone = true
			continue
		}
		if err := db.decide(ctx, tx, w, state, seen, alone, &writes); err != nil {
			return writes, err
		}
	}
	for id, u := range state.users {
		if u.changed {
			writes.user(id, u)
		}
	}
	return writes, nil
}

// queueLoadState queues the first round trip's statements: take the locks of the batch's
// users (waiting for them only when alone), read their state and every stored transaction
// whose uid the batch carries. The returned state is filled once the batch is sent.
func queueLoadState(batch []*writeRequest, alone bool) (*pgx.Batch, *loaded) {
	ids := make([]int64, 0, len(batch))
	uids := make([]pgtype.UUID, 0, len(batch))
	for _, w := range batch {
		ids, uids = append(ids, w.req.UserID), append(uids, pgtype.UUID{Bytes: w.req.UID, Valid: true})
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	state := &loaded{users: make(map[int64]*userState, len(ids)), busy: map[int64]bool{}, stored: map[uuid.UUID]ledger.Outcome{}}
	q := &pgx.Batch{}
	q.Queue(genericPlansSQL)
	if alone {
		q.Queue(waitForUsersSQL, ids)
	} else {
		q.Queue(tryUsersSQL, ids).Query(scanBigints(func(id int64) { state.busy[id] = true }))
	}
	q.Queue(readUsersSQL, ids).Query(scanUserStates(state.users))
	q.Queue(findUIDsSQL, uids).Query(scanStored(state.stored))
	return q, state
}

// queueLoadStateRouted is queueLoadState in statements Citus routes to one shard each: per
// user, its row lock (the transaction waits for it: the user's busy list stays empty); per
// request, its uid among the user's transactions and in transaction_uids. A uid stored for
// another user comes back as a transaction of that user, which no request of this user
// matches.
func queueLoadStateRouted(batch []*writeRequest, _ bool) (*pgx.Batch, *loaded) {
	ids := make([]int64, 0, len(batch))
	for _, w := range batch {
		ids = append(ids, w.req.UserID)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	state := &loaded{users: make(map[int64]*userState, len(ids)), busy: map[int64]bool{}, stored: map[uuid.UUID]ledger.Outcome{}}
	q := &pgx.Batch{}
	for _, id := range ids {
		q.Queue(lockUserRowSQL, id).Query(scanUserStates(state.users))
	}
	for _, w := range batch {
		q.Queue(findUserUIDSQL, w.req.UserID, w.req.UID).Query(scanStored(state.stored))
		uid := w.req.UID
		q.Queue(findUIDOwnerSQL, uid).Query(scanBigints(func(owner int64) {
			if _, ok := state.stored[uid]; !ok {
				state.stored[uid] = ledger.Outcome{Tx: ledger.Transaction{UID: uid, UserID: owner}, Replayed: true}
			}
		}))
	}
	return q, state
}

// scanBigints calls add with the bigint of each row.
func scanBigints(add func(int64)) func(pgx.Rows) error {
	return func(rows pgx.Rows) error {
		for rows.Next() {
			var n int64
			if err := rows.Scan(&n); err != nil {
				return err
			}
			add(n)
		}
		return rows.Err()
	}
}

// scanUserStates reads the rows of readUsersSQL or lockUserRowSQL into users.
func scanUserStates(users map[int64]*userState) func(pgx.Rows) error {
	return func(rows pgx.Rows) error {
		for rows.Next() {
			var id int64
			var r rowState
			var lastTime *time.Time
			var now time.Time
			if err := rows.Scan(&id, &r.balance, &r.lastSeq, &lastTime, &r.eventSeq, &now); err != nil {
				return err
			}
			if lastTime != nil {
				r.lastTime = *lastTime
			}
			users[id] = r.state(now.UTC().Truncate(time.Microsecond))
		}
		return rows.Err()
	}
}

// scanStored reads stored transactions with their answers into stored.
func scanStored(stored map[uuid.UUID]ledger.Outcome) func(pgx.Rows) error {
	return func(rows pgx.Rows) error {
		for rows.Next() {
			var o ledger.Outcome
			t, err := scanTransaction(rows, &o.Reply.Status, &o.Reply.Body)
			if err != nil {
				return err
			}
			o.Tx, o.Replayed = t, true
			stored[t.UID] = o
		}
		return rows.Err()
	}
}

// decide answers one request of a batch against its user's state and queues what it writes.
// A request is answered from a stored transaction with its uid, or from an earlier member of
// the batch with the same uid, exactly as a retry across batches would be. Back-dating moves
// later rows and needs reads of its own, so only a request recorded alone does it; in a batch
// such a request is marked alone and recorded again by its caller.
func (db *DB) decide(ctx context.Context, tx *pipelinedTx, w *writeRequest, in *loaded,
	seen map[uuid.UUID]*writeRequest, alone bool, writes *writeSet) error {
	req := w.req
	if first, ok := in.stored[req.UID]; ok {
		if !req.Matches(first.Tx) {
			w.err = idempotencyConflict(req, first.Tx)
			return nil
		}
		w.out = first
		return nil
	}
	if first, ok := seen[req.UID]; ok {
		switch {
		case first.alone:
			w.alone = true
		case !req.Matches(first.out.Tx):
			w.err = idempotencyConflict(req, first.out.Tx)
		default:
			w.out = ledger.Outcome{Tx: first.out.Tx, Reply: first.out.Reply, Replayed: true}
		}
		return nil
	}
	u, ok := in.users[req.UserID]
	if !ok {
		// Nothing is stored, so a later member with this uid is decided on its own.
		w.err = ledger.NotFound("user %d does not exist", req.UserID)
		return nil
	}
	seen[req.UID] = w
	state := u.UserState
	at := req.EffectiveTime(state.Now)
	backDated := state.BackDated(at)
	if backDated {
		if !alone {
			w.alone = true
			return nil
		}
		var minAfter, maxAfter *ledger.Amount
		err := tx.conn.QueryRow(ctx, backDatedStateSQL, req.UserID, at).Scan(&state.BalanceBefore, &minAfter, &maxAfter)
		if err != nil {
			return err
		}
		if minAfter != nil {
			state.HasAfter, state.MinAfter, state.MaxAfter = true, *minAfter, *maxAfter
		}
	}

	d := ledger.Decide(req, state)
	t := d.Tx
	w.out = ledger.Outcome{Tx: t, Reply: w.render(t), BackDated: backDated}
	if d.Shift != 0 {
		writes.shift = &shift{userID: t.UserID, after: t.Timestamp, by: d.Shift, moved: &w.out.RowsMoved}
	}
	events := d.Events(u.Balance, u.eventSeq)
	writes.transaction(t, w.out.Reply)
	for _, e := range events {
		writes.event(e, db.eventSource)
	}
	u.Balance, u.LastSeq, u.changed = d.NewBalance, t.Seq, true
	u.eventSeq += int64(len(events))
	if t.Status == ledger.Applied && t.Timestamp.After(u.LastTime) {
		u.LastTime = t.Timestamp
	}
	return nil
}

// shift is a back-dated transaction's move of the later balances.
type shift struct {
	userID int64
	after  time.Time
	by     ledger.Amount
	moved  *int64
}

// writeSet gathers what a batch writes as the array parameters of writeSQL. Its elements are
// pgtype's own types, which pgx encodes without reflection (uuid.UUID would go through its
// text form).
type writeSet struct {
	shift *shift
	// guessedNow is the clock a guessed batch was decided with; invalid when read under the locks.
	guessedNow pgtype.Timestamptz

	uids                      []pgtype.UUID
	userIDs, seqs, amounts    []int64
	types, statuses           []string
	reasons                   []pgtype.Text
	times, createdAt          []time.Time
	timestampGiven            []bool
	balanceAfter              []pgtype.Int8
	replyStatus               []int16
	replyBody                 [][]byte
	eventIDs                  []pgtype.UUID
	eventUsers, eventSeqs     []int64
	eventTypes, eventBodies   []string
	users, balances, lastSeqs []int64
	lastTimes                 []pgtype.Timestamptz
	eventSeqsByUser           []int64
	readBalances, readSeqs    []int64
	readLastTimes             []pgtype.Timestamptz
	readEventSeqs             []int64
}

func (s *writeSet) transaction(t ledger.Transaction, reply ledger.Reply) {
	reason := pgtype.Text{String: string(t.Reason), Valid: t.Reason != ""}
	var after pgtype.Int8
	if t.BalanceAfter != nil {
		after = pgtype.Int8{Int64: int64(*t.BalanceAfter), Valid: true}
	}
	s.uids = append(s.uids, pgtype.UUID{Bytes: t.UID, Valid: true})
	s.userIDs, s.seqs, s.amounts = append(s.userIDs, t.UserID), append(s.seqs, t.Seq), append(s.amounts, int64(t.Amount))
	s.types, s.statuses = append(s.types, string(t.Type)), append(s.statuses, string(t.Status))
	s.reasons, s.balanceAfter = append(s.reasons, reason), append(s.balanceAfter, after)
	s.times, s.createdAt = append(s.times, t.Timestamp), append(s.createdAt, t.CreatedAt)
	s.timestampGiven = append(s.timestampGiven, t.TimestampGiven)
	s.replyStatus, s.replyBody = append(s.replyStatus, int16(reply.Status)), append(s.replyBody, reply.Body)
}

func (s *writeSet) event(e ledger.Event, source string) {
	s.eventIDs, s.eventUsers, s.eventSeqs = append(s.eventIDs, pgtype.UUID{Bytes: e.ID, Valid: true}), append(s.eventUsers, e.UserID), append(s.eventSeqs, e.Seq)
	s.eventTypes, s.eventBodies = append(s.eventTypes, string(e.Type)), append(s.eventBodies, string(e.CloudEvent(source)))
}

func (s *writeSet) user(id int64, u *userState) {
	s.users, s.balances, s.lastSeqs = append(s.users, id), append(s.balances, int64(u.Balance)), append(s.lastSeqs, u.LastSeq)
	s.lastTimes, s.eventSeqsByUser = append(s.lastTimes, timestamptz(u.LastTime)), append(s.eventSeqsByUser, u.eventSeq)
	s.readBalances, s.readSeqs = append(s.readBalances, int64(u.read.balance)), append(s.readSeqs, u.read.lastSeq)
	s.readLastTimes, s.readEventSeqs = append(s.readLastTimes, timestamptz(u.read.lastTime)), append(s.readEventSeqs, u.read.eventSeq)
}

// timestamptz is t as a nullable timestamptz: NULL when t is zero.
func timestamptz(t time.Time) pgtype.Timestamptz {
	return pgtype.Timestamptz{Time: t, Valid: !t.IsZero()}
}

// empty reports whether the batch writes nothing: every member was a replay, a refusal that
// stores nothing, or left to be recorded alone.
func (s *writeSet) empty() bool { return len(s.uids) == 0 && s.shift == nil }

// queue adds the batch's writes to q: nothing when every member was a replay or a refusal
// that stores nothing. routed writes with the scalar statements Citus routes to one shard
// each, instead of writeSQL, which sets clock.
func (s *writeSet) queue(q *pgx.Batch, routed bool, clock *clockReading) *pgx.Batch {
	if s.shift != nil {
		sh := s.shift
		q.Queue(shiftLaterSQL, sh.userID, sh.after, sh.by).Exec(func(tag pgconn.CommandTag) error {
			*sh.moved = tag.RowsAffected()
			return nil
		})
	}
	if routed {
		for i := range s.uids {
			q.Queue(insertUIDSQL, s.uids[i], s.userIDs[i])
			q.Queue(insertTransactionSQL, s.uids[i], s.userIDs[i], s.seqs[i], s.types[i], s.amounts[i], s.times[i],
				s.timestampGiven[i], s.statuses[i], s.reasons[i], s.balanceAfter[i], s.replyStatus[i], s.replyBody[i], s.createdAt[i])
		}
		for i := range s.eventIDs {
			q.Queue(insertEventSQL, s.eventIDs[i], s.eventUsers[i], s.eventSeqs[i], s.eventTypes[i], s.eventBodies[i])
		}
		for i := range s.users {
			q.Queue(updateUserSQL, s.users[i], s.balances[i], s.lastSeqs[i], s.lastTimes[i], s.eventSeqsByUser[i])
		}
		return q
	}
	if len(s.uids) == 0 {
		return q
	}
	q.Queue(writeSQL, s.args()...).QueryRow(func(row pgx.Row) error {
		var ok bool
		err := row.Scan(&ok, &clock.database)
		clock.at = time.Now()
		return err
	})
	return q
}

// args are writeSQL's parameters. The transactions go in uid order: two batches that insert
// some of the same uids (for different users, so their user locks do not order them) then
// wait on each other's first shared uid only, never in a cycle. Events keep arrival order.
func (s *writeSet) args() []any {
	order := make([]int, len(s.uids))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return bytes.Compare(s.uids[a].Bytes[:], s.uids[b].Bytes[:]) })
	return []any{permute(s.uids, order), permute(s.userIDs, order), permute(s.seqs, order), permute(s.types, order),
		permute(s.amounts, order), permute(s.times, order), permute(s.timestampGiven, order), permute(s.statuses, order),
		permute(s.reasons, order), permute(s.balanceAfter, order), permute(s.replyStatus, order),
		permute(s.replyBody, order), permute(s.createdAt, order),
		s.eventIDs, s.eventUsers, s.eventSeqs, s.eventTypes, s.eventBodies,
		s.users, s.balances, s.lastSeqs, s.lastTimes, s.eventSeqsByUser,
		s.readBalances, s.readSeqs, s.readLastTimes, s.readEventSeqs, s.guessedNow}
}

func permute[T any](xs []T, order []int) []T {
	out := make([]T, len(order))
	for i, j := range order {
		out[i] = xs[j]
	}
	return out
}

func idempotencyConflict(req ledger.Request, t ledger.Transaction) error {
	return &ledger.Error{Code: ledger.CodeIdempotencyConflict, Field: "uid",
		Detail: "uid " + req.UID.String() + " was already used for a different transaction (user, type, amount or timestamp differ); choose a new uid for a new transaction"}
}

// errBatcherStopped answers writes that arrive after Close.
var errBatcherStopped = ledger.Unavailable(errors.New("the write path is shut down"))
