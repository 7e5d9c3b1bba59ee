package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/tally-ledger/tally/client"
)

// A withdrawal that is safe to retry: the uid is chosen before the first attempt, and the
// client resends it with backoff until tally answers. Errors that are final are typed.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := client.New("http://localhost:8000",
		client.WithAttemptTimeout(5*time.Second),
		client.WithRetryPolicy(client.RetryPolicy{MaxAttempts: 8, BaseDelay: 200 * time.Millisecond, MaxDelay: 5 * time.Second}))

	user, err := c.CreateUser(ctx, "vasya")
	if err != nil {
		log.Fatal(err)
	}
	amount, err := client.ParseAmount("12.34")
	if err != nil {
		log.Fatal(err)
	}
	// Keep the uid with the payment it belongs to, so that a restarted process resends it.
	uid := client.NewUID()
	res, err := c.Withdraw(ctx, uid, user.ID, amount)
	switch {
	case client.IsInsufficientFunds(err):
		fmt.Println("refused for good:", res.Transaction.Reason)
	case err != nil:
		// The outcome is unknown; resending uid later is safe.
		log.Fatalf("withdrawal %s: %v", res.UID, err)
	default:
		fmt.Println("balance after:", res.Transaction.BalanceAfter, "replayed:", res.Replayed)
	}
}

// A consumer without NATS: it follows the feed from the cursor it stored, and stores the
// next cursor in the same database transaction as the effects of each page.
func ExampleClient_Follow() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	c := client.New("http://localhost:8000")
	funded := map[int64]bool{} // stands for the consumer's database
	lastSeq := map[int64]int64{}
	cursor := "" // loaded from the consumer's database; "" the first time
	cursor, err := c.Follow(ctx, cursor, func(_ context.Context, page client.EventPage) error {
		for _, e := range page.Events {
			if e.Data.Sequence <= lastSeq[e.Data.UserID] {
				continue // a repeat or a late arrival
			}
			lastSeq[e.Data.UserID] = e.Data.Sequence
			switch e.Type {
			case client.EventBalanceFunded:
				funded[e.Data.UserID] = true
			case client.EventBalanceDepleted:
				funded[e.Data.UserID] = false
			}
		}
		// commit the effects together with page.Cursor here
		return nil
	})
	log.Printf("stopped at cursor %q: %v", cursor, err)
}
