package relay

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

// On Citus the relay publishes without a stream cursor (postgres/outbox_citus.go): it reads
// unpublished events, publishes each user's in sequence order, and marks them published once
// JetStream acknowledged them. The users are cut into Config.Slices slices by id, one lease
// each. Every relay announces itself with a shared lease and holds at most its share of the
// slices (the slices divided by the relays, rounded up), so relays started together divide
// the work, and the survivors take a dead relay's slices within a few lease polls.
//
// Slices follow user ids, not shards: a shard move or split changes nothing for the relays,
// and a user's events are published by one relay at a time whichever worker holds them. The
// leases divide work; correctness does not rest on them. Two relays that publish a user's
// events at once (a frozen holder that wakes) send them in sequence order each, a user's next
// event only after the previous one was stored, and the stream drops repeats by Nats-Msg-Id.

// DefaultSlices is how many slices the relays divide on Citus unless Config.Slices says
// otherwise: enough for four relays to share the work.
const DefaultSlices = 4

// MaxSlices bounds Config.Slices, so that every slice's lease key stays apart.
const MaxSlices = 256

// sliceLeaseBase starts the lease keys on Citus. Each count of slices has keys of its own, so
// relays configured differently do not share leases: each group covers every user, and the
// stream drops what both publish.
const sliceLeaseBase = 7_300_000

func sliceKey(slices, slice int) int64 { return sliceLeaseBase + int64(slices)*1024 + int64(slice) }

// memberKey is held shared by every relay of the same slice count.
func memberKey(slices int) int64 { return sliceKey(slices, 1023) }

// sliceSet is the slices this relay holds, each with its lease.
type sliceSet struct {
	mu     sync.Mutex
	leases map[int]*postgres.Lease
	share  atomic.Int64 // how many slices this relay may hold
}

// held lists the slices whose lease is certainly still this relay's.
func (s *sliceSet) held() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for i, l := range s.leases {
		if l.Held() {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return out
}

func (s *sliceSet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.leases)
}

// add records a lease, unless the relay holds its share already: then the caller gives it up.
func (s *sliceSet) add(slice int, l *postgres.Lease) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if int64(len(s.leases)) >= s.share.Load() {
		return false
	}
	s.leases[slice] = l
	return true
}

// remove forgets a slice's lease; with overShare set, only if the relay holds more than its
// share, so that of several slices checking at once only the excess leaves.
func (s *sliceSet) remove(slice int, overShare bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if overShare && int64(len(s.leases)) <= s.share.Load() {
		return false
	}
	delete(s.leases, slice)
	return true
}

// runSlices is Run on Citus: it announces this relay, holds its share of the slices and
// publishes their events, until ctx ends or the announcement's lease is lost.
func (r *Relay) runSlices(ctx context.Context) error {
	leaseCfg := postgres.LeaseConfig{TTL: r.cfg.LeaseTTL, Poll: r.cfg.Poll * 10}
	member, err := r.db.AcquireLease(ctx, memberKey(r.cfg.Slices), postgres.LeaseConfig{TTL: r.cfg.LeaseTTL, Shared: true})
	if err != nil {
		return err
	}
	defer member.Release()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	set := &sliceSet{leases: map[int]*postgres.Lease{}}
	set.share.Store(int64(r.cfg.Slices))
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-member.Lost():
			r.log.Warn("relay lost its membership lease")
		case <-ctx.Done():
		}
		cancel()
	})
	wg.Go(func() { r.countRelays(ctx, set) })
	for slice := range r.cfg.Slices {
		wg.Go(func() { r.holdSlice(ctx, slice, set, leaseCfg) })
	}
	r.log.Info("relay publishes by slice", "slices", r.cfg.Slices)
	err = r.publishSlices(ctx, set)
	cancel()
	wg.Wait()
	r.leader.Store(false)
	r.slicesHeld.Store(0)
	return err
}

// countRelays keeps the relay's share up to date: the slices divided by the relays that
// announced themselves, rounded up.
func (r *Relay) countRelays(ctx context.Context, set *sliceSet) {
	for {
		n, err := r.db.LockHolders(ctx, memberKey(r.cfg.Slices))
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.Warn("relay: count the relays", "error", err)
		case n > 0:
			set.share.Store(int64((r.cfg.Slices + n - 1) / n))
		}
		if !sleep(ctx, r.cfg.Poll*10) {
			return
		}
	}
}

// holdSlice takes the slice's lease whenever it is free and the relay is under its share, and
// gives it up when the relay holds more than its share (another relay joined) or ctx ends.
func (r *Relay) holdSlice(ctx context.Context, slice int, set *sliceSet, cfg postgres.LeaseConfig) {
	cfg.Eligible = func() bool { return int64(set.count()) < set.share.Load() }
	for ctx.Err() == nil {
		lease, err := r.db.AcquireLease(ctx, sliceKey(r.cfg.Slices, slice), cfg)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("relay slice lease", "slice", slice, "error", err)
				sleep(ctx, r.cfg.MaxBackoff)
			}
			continue
		}
		if !set.add(slice, lease) {
			lease.Release()
			continue
		}
		r.log.Info("relay holds a slice", "slice", slice)
		gaveUp := r.keepSlice(ctx, slice, lease, set, cfg.Poll)
		lease.Release()
		if gaveUp {
			sleep(ctx, cfg.Poll*2) // while a relay under its share takes it
		}
	}
}

// keepSlice waits until the slice's lease ends, ctx ends, or the relay holds more than its
// share (another relay joined), and then forgets the slice. It reports whether it gave the
// slice up to share the work.
func (r *Relay) keepSlice(ctx context.Context, slice int, lease *postgres.Lease, set *sliceSet, poll time.Duration) bool {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			set.remove(slice, false)
			return false
		case <-lease.Lost():
			r.log.Warn("relay lost a slice's lease", "slice", slice)
			set.remove(slice, false)
			return false
		case <-tick.C:
			if set.remove(slice, true) {
				r.log.Info("relay gives a slice up to share the work", "slice", slice)
				return true
			}
		}
	}
}

// publishSlices publishes the unpublished events of the slices held, in rounds of up to
// Batch, and marks what JetStream acknowledged. After a failure the events not acknowledged
// stay unpublished and are read again.
func (r *Relay) publishSlices(ctx context.Context, set *sliceSet) error {
	backoff := r.cfg.Poll
	streamReady := false
	lastPrune := time.Time{}
	var fromUser int64 // where the next round starts, going round the users
	for ctx.Err() == nil {
		held := set.held()
		r.leader.Store(len(held) > 0)
		r.slicesHeld.Store(int32(len(held)))
		if len(held) == 0 {
			sleep(ctx, r.cfg.Poll)
			continue
		}
		if !r.streamReady(ctx, &streamReady, &backoff) {
			continue
		}
		events, err := r.db.PendingEvents(ctx, r.cfg.Slices, held, fromUser, r.cfg.Batch)
		if err != nil {
			r.log.Warn("read unpublished events", "error", err)
			backoff = r.wait(ctx, backoff)
			continue
		}
		if len(events) == 0 {
			if fromUser > 0 {
				fromUser = 0
				continue
			}
			// One relay prunes, the holder of slice 0: a delete runs on every shard.
			if held[0] == 0 && time.Since(lastPrune) > time.Minute {
				r.prunePublished(ctx)
				lastPrune = time.Now()
			}
			sleep(ctx, r.cfg.Poll)
			continue
		}
		// A lease may have gone while the events were read (a relay that froze, or a slice
		// handed to a relay that joined): publish only the slices still held, so that nothing
		// another relay published since goes out again after it.
		if events = ofSlices(events, set.held(), r.cfg.Slices); len(events) == 0 {
			fromUser = 0
			continue
		}
		var acked int
		published, _ := r.publishAndRecord(ctx, events, func(done []ledger.StoredEvent) error {
			acked = len(done)
			if err := r.db.MarkPublished(ctx, done); err != nil {
				// Published and not marked: they go out again, and the stream drops them.
				r.log.Warn("mark events published", "error", err)
			}
			return nil
		})
		fromUser = nextFromUser(events, acked, r.cfg.Batch)
		backoff = r.nextBackoff(ctx, published, backoff)
	}
	return ctx.Err()
}

// nextFromUser is where the round after a batch starts: at the last user of a full batch, whose
// events may go on; from the first user again after a short batch or a failure.
func nextFromUser(events []ledger.StoredEvent, acked, batch int) int64 {
	if acked < len(events) || len(events) < batch {
		return 0
	}
	return events[len(events)-1].UserID
}

func (r *Relay) prunePublished(ctx context.Context) {
	n, err := r.db.PrunePublished(ctx, time.Now().Add(-r.cfg.Retention))
	if err != nil {
		r.log.Warn("prune outbox", "error", err)
		return
	}
	if n > 0 {
		r.log.Info("pruned published events", "rows", n)
	}
}

var errTooManySlices = fmt.Errorf("relay: at most %d slices", MaxSlices)

// SlicesHeld is how many of the outbox's slices this relay publishes, on Citus.
func (r *Relay) SlicesHeld() int { return int(r.slicesHeld.Load()) }

// runDistributed runs runSlices again whenever it stops, until ctx ends.
func (r *Relay) runDistributed(ctx context.Context) error {
	for {
		err := r.runSlices(ctx)
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("relay stopped publishing; announcing itself again", "error", err)
		if !sleep(ctx, r.cfg.MaxBackoff) {
			return nil
		}
	}
}

// ofSlices keeps the events of the users in the slices held (sorted), as PendingEvents
// selects them: user_id % n.
func ofSlices(events []ledger.StoredEvent, held []int, n int) []ledger.StoredEvent {
	var kept []ledger.StoredEvent
	for _, e := range events {
		if _, ok := slices.BinarySearch(held, int(e.UserID%int64(n))); ok {
			kept = append(kept, e)
		}
	}
	return kept
}
