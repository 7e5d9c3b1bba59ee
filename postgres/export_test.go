package postgres

import (
	"context"
	"io/fs"
	"time"
)

// UserAtSQL lets tests explain the query behind UserAt.
const UserAtSQL = userAtSQL

// MigrateFiles applies the migrations in fsys as Migrate applies the embedded ones, with the
// given lock timeout.
func MigrateFiles(ctx context.Context, databaseURL string, fsys fs.FS, lockTimeout time.Duration) ([]string, error) {
	ms, err := migrations(fsys)
	if err != nil {
		return nil, err
	}
	return migrate(ctx, databaseURL, ms, lockTimeout)
}
