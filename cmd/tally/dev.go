package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

func dev(ctx context.Context, cfg config, log *slog.Logger, stderr io.Writer) error {
	return errors.New("not yet")
}

func loadDemo(ctx context.Context, databaseURL string, log *slog.Logger) error {
	return fmt.Errorf("not yet")
}
