package bench

import (
	"math"
	"math/bits"
	"time"
)

// subBucketBits sets the histogram's precision: every value is kept within 1/2^(subBucketBits-1)
// of itself (0.8%), in the manner of HdrHistogram.
const subBucketBits = 8

const (
	subBuckets     = 1 << subBucketBits
	halfSubBuckets = subBuckets / 2
	// bucketCount covers every non-negative int64: values below subBuckets get a bucket each,
	// then each power of two gets halfSubBuckets buckets of equal width.
	bucketCount = subBuckets + (63-subBucketBits)*halfSubBuckets
)

// Histogram counts durations in log-linear buckets: exact below 256ns, then within 0.8%. It
// has a fixed size (about 58 KiB) whatever it records, and is not safe for concurrent use.
type Histogram struct {
	counts   [bucketCount]uint64
	total    uint64
	min, max int64
	sum      float64
}

// bucketOf is the index of the bucket holding v, for v >= 0.
func bucketOf(v int64) int {
	if v < subBuckets {
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - subBucketBits
	mantissa := int(v >> shift) // in [halfSubBuckets, subBuckets)
	return subBuckets + (shift-1)*halfSubBuckets + mantissa - halfSubBuckets
}

// bucketHigh is the largest value bucket i holds.
func bucketHigh(i int) int64 {
	if i < subBuckets {
		return int64(i)
	}
	j := i - subBuckets
	shift := j/halfSubBuckets + 1
	mantissa := int64(j%halfSubBuckets + halfSubBuckets)
	return (mantissa+1)<<shift - 1
}

// Record counts one duration; negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(v)]++
	if h.total == 0 || v < h.min {
		h.min = v
	}
	h.max = max(h.max, v)
	h.total++
	h.sum += float64(v)
}

// Merge adds every count of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.total == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.total == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.total += o.total
	h.sum += o.sum
}

// Reset empties the histogram.
func (h *Histogram) Reset() { *h = Histogram{} }

// Count is the number of recorded durations.
func (h *Histogram) Count() uint64 { return h.total }

// Max is the largest recorded duration, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Min is the smallest recorded duration, exactly.
func (h *Histogram) Min() time.Duration { return time.Duration(h.min) }

// Mean is the average recorded duration.
func (h *Histogram) Mean() time.Duration {
	if h.total == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.total))
}

// Percentile is the duration at or below which q percent of the recorded ones lie (the one
// of rank ceil(q/100·n)), reported as its bucket's upper bound, so never below the truth and
// at most 0.8% above it.
func (h *Histogram) Percentile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q / 100 * float64(h.total)))
	rank = min(max(rank, 1), h.total)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(max(bucketHigh(i), h.min), h.max))
		}
	}
	return time.Duration(h.max)
}
