package ledger

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// EventType names what happened; it is also the NATS subject after "tally.".
type EventType string

// The events tally publishes.
const (
	EventUserCreated         EventType = "user.created"
	EventTransactionApplied  EventType = "transaction.applied"
	EventTransactionRejected EventType = "transaction.rejected"
	// EventBalanceFunded fires when the current balance goes from zero to above zero.
	EventBalanceFunded EventType = "balance.funded"
	// EventBalanceDepleted fires when the current balance goes from above zero to zero.
	EventBalanceDepleted EventType = "balance.depleted"
)

// Event is one fact for neighbouring services, stored in the outbox with the change it
// describes.
type Event struct {
	ID     uuid.UUID // globally unique (UUIDv7), the broker's de-duplication id
	Type   EventType
	UserID int64
	Seq    int64 // the user's event sequence number: 1, 2, 3, ... without gaps
	Time   time.Time
	Data   EventData
}

// EventData is the payload of every event; fields that do not apply are omitted.
type EventData struct {
	UserID       int64   `json:"user_id"`
	Sequence     int64   `json:"sequence"`
	Balance      Amount  `json:"balance"` // the user's current balance after the change
	Name         string  `json:"name,omitempty"`
	UID          string  `json:"uid,omitempty"`
	Type         Type    `json:"type,omitempty"`
	Amount       *Amount `json:"amount,omitempty"`
	Timestamp    string  `json:"timestamp,omitempty"`
	Status       Status  `json:"status,omitempty"`
	Reason       Code    `json:"reason,omitempty"`
	BalanceAfter *Amount `json:"balance_after,omitempty"`
}

// Subject is the NATS subject the event is published on.
func (e Event) Subject() string { return "tally." + string(e.Type) }

// CloudEvent encodes the event as a CloudEvents 1.0 JSON envelope.
func (e Event) CloudEvent(source string) []byte {
	b, err := json.Marshal(struct {
		SpecVersion     string    `json:"specversion"`
		ID              string    `json:"id"`
		Source          string    `json:"source"`
		Type            string    `json:"type"`
		Subject         string    `json:"subject"`
		Time            string    `json:"time"`
		DataContentType string    `json:"datacontenttype"`
		Data            EventData `json:"data"`
	}{"1.0", e.ID.String(), source, e.Subject(), "users/" + strconv.FormatInt(e.UserID, 10),
		FormatTime(e.Time), "application/json", e.Data})
	if err != nil {
		panic(err) // only our own types are encoded
	}
	return b
}

func newEventID() uuid.UUID {
	return uuid.Must(uuid.NewV7())
}

// UserCreatedEvent is the first event of every user.
func UserCreatedEvent(u User) Event {
	return Event{ID: newEventID(), Type: EventUserCreated, UserID: u.ID, Seq: 1, Time: u.CreatedAt,
		Data: EventData{UserID: u.ID, Sequence: 1, Balance: 0, Name: u.Name}}
}

// Events lists what a decision tells neighbouring services: the transaction applied or
// rejected, and a crossing of the current balance between zero and above zero. lastSeq is
// the user's last event sequence number.
func (d Decision) Events(previousBalance Amount, lastSeq int64) []Event {
	t := d.Tx
	amount := t.Amount
	data := EventData{UserID: t.UserID, Balance: d.NewBalance, UID: t.UID.String(), Type: t.Type,
		Amount: &amount, Timestamp: FormatTime(t.Timestamp), Status: t.Status, Reason: t.Reason,
		BalanceAfter: t.BalanceAfter}
	types := []EventType{EventTransactionApplied}
	if t.Status == Rejected {
		types[0] = EventTransactionRejected
	}
	switch {
	case previousBalance == 0 && d.NewBalance > 0:
		types = append(types, EventBalanceFunded)
	case previousBalance > 0 && d.NewBalance == 0:
		types = append(types, EventBalanceDepleted)
	}
	events := make([]Event, len(types))
	for i, typ := range types {
		data.Sequence = lastSeq + int64(i) + 1
		events[i] = Event{ID: newEventID(), Type: typ, UserID: t.UserID, Seq: data.Sequence, Time: t.CreatedAt, Data: data}
	}
	return events
}

// EventCursor is a place in the event stream, which is ordered by the writing transaction's
// id, then by the row's position.
type EventCursor struct {
	TxID     int64
	Position int64
}

// StoredEvent is an outbox row: an event and its place in the stream.
type StoredEvent struct {
	Cursor    EventCursor
	ID        uuid.UUID
	Type      EventType
	UserID    int64
	Seq       int64
	Body      []byte // the CloudEvents JSON, as written with the change
	CreatedAt time.Time
}

// Cursors of a user's event feed that are not a sequence number: on Citus the feed is per
// user and its cursor is the user's last sequence read.
const (
	UserFeedStart int64 = -1 // before the oldest of the user's events still kept
	UserFeedEnd   int64 = -2 // after the user's newest event: only later events follow
)
