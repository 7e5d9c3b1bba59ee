package pgtest

import (
	"context"
	"os"
	"testing"

	"github.com/tally-ledger/tally/internal/devenv"
)

// RequireCitus skips the test when Citus is not installed, or fails it when the environment
// asks for the Citus tests (CI=1 or TALLY_REQUIRE_CITUS=1): there a skip would hide that
// they did not run.
func RequireCitus(t testing.TB) {
	t.Helper()
	if err := devenv.CitusInstalled(context.Background()); err != nil {
		if devenv.CitusRequired(os.Getenv) {
			t.Fatalf("the Citus tests are required here: %v", err)
		}
		t.Skip(err)
	}
}
