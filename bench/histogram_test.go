package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// reference is the percentile of sorted values by the histogram's definition: rank ceil(q·n).
func reference(sorted []time.Duration, q float64) time.Duration {
	rank := max(int(math.Ceil(q/100*float64(len(sorted)))), 1)
	return sorted[rank-1]
}

func TestHistogramPercentilesMatchSortedReference(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	distributions := map[string]func() time.Duration{
		"uniform small":  func() time.Duration { return time.Duration(rng.IntN(300)) },
		"uniform ms":     func() time.Duration { return time.Duration(rng.Int64N(int64(50 * time.Millisecond))) },
		"log-normal":     func() time.Duration { return time.Duration(math.Exp(rng.NormFloat64()*1.5 + 14)) },
		"bimodal tail":   func() time.Duration { return bimodal(rng) },
		"huge durations": func() time.Duration { return time.Duration(rng.Int64N(math.MaxInt64)) },
	}
	for name, draw := range distributions {
		t.Run(name, func(t *testing.T) {
			var h Histogram
			values := make([]time.Duration, 20_000)
			for i := range values {
				values[i] = draw()
				h.Record(values[i])
			}
			slices.Sort(values)
			require.Equal(t, uint64(len(values)), h.Count())
			require.Equal(t, values[0], h.Min())
			require.Equal(t, values[len(values)-1], h.Max())
			for _, q := range []float64{0, 1, 10, 50, 90, 99, 99.9, 99.99, 100} {
				want := reference(values, q)
				got := h.Percentile(q)
				require.GreaterOrEqual(t, got, want, "p%v", q)
				require.LessOrEqual(t, float64(got-want), float64(want)/128+1, "p%v: got %v, want %v", q, got, want)
			}
		})
	}
}

func bimodal(rng *rand.Rand) time.Duration {
	if rng.IntN(100) == 0 {
		return time.Second + time.Duration(rng.Int64N(int64(time.Second)))
	}
	return time.Millisecond + time.Duration(rng.Int64N(int64(time.Millisecond)))
}

func TestHistogramExactBelowSubBuckets(t *testing.T) {
	t.Parallel()
	var h Histogram
	for v := range subBuckets {
		h.Record(time.Duration(v))
	}
	for v := 1; v <= subBuckets; v++ {
		require.Equal(t, time.Duration(v-1), h.Percentile(100*float64(v)/subBuckets))
	}
}

func TestHistogramBucketsCoverEveryValue(t *testing.T) {
	t.Parallel()
	for i := range bucketCount - 1 {
		require.Equal(t, i+1, bucketOf(bucketHigh(i)+1), "bucket %d", i)
		require.Equal(t, i, bucketOf(bucketHigh(i)), "bucket %d", i)
	}
	require.Equal(t, bucketCount-1, bucketOf(math.MaxInt64))
	require.Equal(t, int64(math.MaxInt64), bucketHigh(bucketCount-1))
}

func TestHistogramMergeAndReset(t *testing.T) {
	t.Parallel()
	var a, b, all Histogram
	for i := range 1000 {
		d := time.Duration(i) * time.Microsecond
		all.Record(d)
		if i%2 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(&b)
	require.Equal(t, all, a)
	require.Equal(t, all.Mean(), 499500*time.Nanosecond)
	a.Reset()
	require.Zero(t, a.Count())
	require.Zero(t, a.Percentile(99))
	a.Record(-time.Second)
	require.Zero(t, a.Max())
}
