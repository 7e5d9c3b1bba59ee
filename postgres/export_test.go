package postgres

// UserAtSQL lets tests explain the query behind UserAt.
const UserAtSQL = userAtSQL

// QueuedWrites counts the transaction requests waiting for a write worker.
func (db *DB) QueuedWrites() int { return len(db.batcher.queue) }

// UserLockKey is the advisory lock key of a user's writes.
var UserLockKey = userLockKey
