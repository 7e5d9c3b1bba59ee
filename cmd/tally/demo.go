package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/tally-ledger/tally/httpapi"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// demoNamespace derives the demo's uids, so the same data always carries the same uids: a
// second load replays instead of duplicating, and a client can replay any demo uid.
var demoNamespace = uuid.MustParse("7c0e5a0d-4f7b-4d36-9b8e-1f6a2c3d9e41")

// demoUsers are created in this order, so on a fresh database Vasya is user 1.
var demoUsers = []string{"Vasya", "Petya", "Masha", "Olga"}

// The demo covers a year around May 2022: [demoStart, demoEnd).
var (
	demoStart = time.Date(2021, 11, 1, 0, 0, 0, 0, time.UTC)
	demoEnd   = time.Date(2022, 11, 1, 0, 0, 0, 0, time.UTC)
)

// demoInstant is the instant the assignment asks about: "5.05.2022 00:00".
var demoInstant = time.Date(2022, 5, 5, 0, 0, 0, 0, time.UTC)

type demoTransaction struct {
	uid    uuid.UUID
	typ    ledger.Type
	amount ledger.Amount
	at     time.Time
}

func demoUID(user string, n int) uuid.UUID {
	return uuid.NewSHA1(demoNamespace, fmt.Appendf(nil, "tally-demo/%s/%d", user, n))
}

// demoTransactions is one user's year: a salary early each month, sometimes a bonus, rent
// around the 10th and everyday spending. Each user draws from its own fixed seed, so the
// data never changes, and withdrawals are cut to what the balance allows, so none is refused.
func demoTransactions(index int, user string) []demoTransaction {
	rng := rand.New(rand.NewSource(int64(20220505 + index)))
	salary := ledger.Amount(80_000 + rng.Intn(120_000)) // 800.00 to 2000.00
	rent := salary * ledger.Amount(30+rng.Intn(15)) / 100
	type event struct {
		typ    ledger.Type
		amount ledger.Amount
		at     time.Time
	}
	var out []demoTransaction
	var balance ledger.Amount
	var last time.Time
	for month := demoStart; month.Before(demoEnd); month = month.AddDate(0, 1, 0) {
		days := month.AddDate(0, 1, -1).Day()
		at := func(firstDay, lastDay int) time.Time {
			day := firstDay + rng.Intn(lastDay-firstDay+1)
			return month.AddDate(0, 0, day-1).Add(time.Duration(8*3600+rng.Intn(14*3600)) * time.Second)
		}
		events := []event{
			{ledger.Deposit, salary + ledger.Amount(rng.Intn(20_000)), at(1, 5)},
			{ledger.Withdraw, rent, at(9, 12)},
		}
		if rng.Intn(4) == 0 {
			events = append(events, event{ledger.Deposit, ledger.Amount(5_000 + rng.Intn(50_000)), at(1, days)})
		}
		for range 4 + rng.Intn(5) {
			events = append(events, event{ledger.Withdraw, ledger.Amount(300 + rng.Intn(25_000)), at(1, days)})
		}
		sort.SliceStable(events, func(i, j int) bool { return events[i].at.Before(events[j].at) })
		for _, e := range events {
			if e.typ == ledger.Withdraw {
				e.amount = min(e.amount, balance)
				if e.amount == 0 {
					continue
				}
				balance -= e.amount
			} else {
				balance += e.amount
			}
			if !e.at.After(last) {
				e.at = last.Add(time.Second)
			}
			last = e.at
			out = append(out, demoTransaction{demoUID(user, len(out)+1), e.typ, e.amount, e.at})
		}
	}
	return out
}

// loadDemo loads the demo users and their transactions. It is safe to run again: a load that
// finished is detected by its last uid, and an interrupted one resumes, because every
// transaction goes through Apply with its fixed uid.
func loadDemo(ctx context.Context, cfg config, log *slog.Logger) error {
	// openDB, as serve does, so the demo's events carry this deployment's source.
	db, err := openDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	return loadDemoInto(ctx, db, log)
}

func loadDemoInto(ctx context.Context, db *postgres.DB, log *slog.Logger) error {
	plans := make([][]demoTransaction, len(demoUsers))
	for i, user := range demoUsers {
		plans[i] = demoTransactions(i, user)
	}
	lastPlan := plans[len(plans)-1]
	_, err := db.Transaction(ctx, lastPlan[len(lastPlan)-1].uid)
	switch {
	case err == nil:
		log.Info("demo data already loaded")
		return nil
	case ledger.ErrorCode(err) != ledger.CodeNotFound:
		return err
	}

	var vasya int64
	total := 0
	for i, user := range demoUsers {
		// A user whose first transaction is stored survives from an interrupted load.
		var id int64
		first, err := db.Transaction(ctx, plans[i][0].uid)
		switch {
		case err == nil:
			id = first.UserID
		case ledger.ErrorCode(err) == ledger.CodeNotFound:
			u, err := db.CreateUser(ctx, user)
			if err != nil {
				return fmt.Errorf("create demo user %s: %w", user, err)
			}
			id = u.ID
		default:
			return err
		}
		for _, t := range plans[i] {
			at := t.at
			out, err := db.Apply(ctx, ledger.Request{UID: t.uid, UserID: id, Type: t.typ, Amount: t.amount, Timestamp: &at},
				httpapi.RenderTransaction)
			if err != nil {
				return fmt.Errorf("demo transaction %s of %s: %w", t.uid, user, err)
			}
			if out.Tx.Status != ledger.Applied {
				return fmt.Errorf("demo transaction %s of %s was refused: %s", t.uid, user, out.Tx.Reason)
			}
		}
		total += len(plans[i])
		if user == "Vasya" {
			vasya = id
		}
		log.Info("demo user loaded", "id", id, "name", user, "transactions", len(plans[i]))
	}
	u, err := db.UserAt(ctx, vasya, demoInstant)
	if err != nil {
		return err
	}
	log.Info("demo data loaded", "users", len(demoUsers), "transactions", total,
		"vasya_id", vasya, "vasya_balance_at", ledger.FormatTime(demoInstant), "balance", u.Balance.String())
	return nil
}
