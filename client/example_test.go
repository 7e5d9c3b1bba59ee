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
