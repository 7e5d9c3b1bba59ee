package client

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A call with the default policy keeps retrying for at least as long as tally takes to
// restart (a few seconds), even when every wait is drawn at its shortest.
func TestDefaultRetriesOutlastARestart(t *testing.T) {
	t.Parallel()
	p := New("http://tally").retry
	var shortest, longest time.Duration
	for attempt := 1; attempt < p.MaxAttempts; attempt++ {
		full := p.BaseDelay << (attempt - 1)
		full = min(full, p.MaxDelay)
		shortest += full / 2
		longest += full
	}
	require.GreaterOrEqual(t, shortest, 10*time.Second)
	require.LessOrEqual(t, longest, 30*time.Second, "a caller waits no longer than the docs say")
	for attempt := 1; attempt < p.MaxAttempts; attempt++ {
		d := p.delay(attempt)
		require.LessOrEqual(t, d, p.MaxDelay)
		require.Positive(t, d)
	}
}
