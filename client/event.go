package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// EventType is the CloudEvents type of a tally event, such as "tally.balance.funded".
type EventType string

// The five event types tally writes. A user's events carry one sequence across all five.
const (
	EventUserCreated         EventType = "tally.user.created"
	EventTransactionApplied  EventType = "tally.transaction.applied"
	EventTransactionRejected EventType = "tally.transaction.rejected"
	// EventBalanceFunded says the current balance went from zero to above zero.
	EventBalanceFunded EventType = "tally.balance.funded"
	// EventBalanceDepleted says the current balance went from above zero to zero.
	EventBalanceDepleted EventType = "tally.balance.depleted"
)

// Event is a tally event: a CloudEvents 1.0 JSON envelope and its data, as the HTTP feed
// returns it and the relay publishes it to JetStream.
type Event struct {
	SpecVersion string    `json:"specversion"` // "1.0"
	ID          string    `json:"id"`          // unique per event: de-duplicate by it
	Source      string    `json:"source"`      // the writing deployment's EVENT_SOURCE
	Type        EventType `json:"type"`
	Subject     string    `json:"subject"` // "users/<user id>"
	// Time is when the user was created, or when the write took the user's lock.
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype"`
	Data            EventData `json:"data"`
}

// EventData is an event's payload; fields that do not apply to its type are zero.
type EventData struct {
	UserID int64 `json:"user_id"`
	// Sequence numbers the user's events 1, 2, 3, ... without gaps across all five types;
	// apply a user's events in this order and ignore one at or below the last applied.
	Sequence int64  `json:"sequence"`
	Balance  Amount `json:"balance"` // the user's current balance after the change
	Name     string `json:"name,omitempty"`
	// The transaction, for transaction.* events and the balance.* event of the same write.
	UID       string          `json:"uid,omitempty"`
	Type      TransactionType `json:"type,omitempty"`
	Amount    *Amount         `json:"amount,omitempty"`
	Timestamp time.Time       `json:"timestamp,omitzero"`
	Status    Status          `json:"status,omitempty"`
	Reason    string          `json:"reason,omitempty"`
	// BalanceAfter is the balance right after an applied transaction in the user's timeline
	// when it was written; nil for a refusal.
	BalanceAfter *Amount `json:"balance_after,omitempty"`
}

// ErrNotAnEvent marks a body that DecodeEvent cannot read as a tally event.
var ErrNotAnEvent = errors.New("not a tally event")

// DecodeEvent reads a CloudEvent as tally writes it, such as the body of a JetStream
// message. It fails with ErrNotAnEvent when the body is not JSON or lacks what every tally
// event has, so that a consumer can set such a message aside instead of retrying it.
func DecodeEvent(body []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(body, &e); err != nil {
		return Event{}, fmt.Errorf("%w: %w", ErrNotAnEvent, err)
	}
	var missing string
	switch {
	case e.SpecVersion != "1.0":
		missing = `specversion "1.0"`
	case e.ID == "":
		missing = "id"
	case e.Source == "":
		missing = "source"
	case e.Type == "":
		missing = "type"
	case e.Data.UserID <= 0:
		missing = "data.user_id"
	case e.Data.Sequence <= 0:
		missing = "data.sequence"
	}
	if missing != "" {
		return Event{}, fmt.Errorf("%w: no %s", ErrNotAnEvent, missing)
	}
	return e, nil
}
