// Command plot draws the figures of docs/performance.md from the tables bench/run.sh writes.
//
//	go run ./bench/plot -in bin/bench -out docs/img
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

func main() {
	in := flag.String("in", "bin/bench", "directory with throughput.tsv, latency.tsv and backdating.tsv")
	out := flag.String("out", "docs/img", "directory for the PNG files")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, fig := range []struct {
		table, png string
		draw       func([][]string) (*plot.Plot, error)
	}{
		{"throughput.tsv", "throughput.png", throughput},
		{"latency.tsv", "latency.png", latency},
		{"backdating.tsv", "backdating.png", backdating},
	} {
		rows, err := readTable(filepath.Join(in, fig.table))
		if errors.Is(err, fs.ErrNotExist) {
			continue // a partial run (BENCH_PARTS) leaves its figure as it was
		}
		if err != nil {
			return err
		}
		p, err := fig.draw(rows)
		if err != nil {
			return fmt.Errorf("%s: %w", fig.table, err)
		}
		if err := p.Save(16*vg.Centimeter, 10*vg.Centimeter, filepath.Join(out, fig.png)); err != nil {
			return err
		}
	}
	return nil
}

// readTable reads tab-separated rows, skipping a header line starting with '#'.
func readTable(path string) ([][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck // read only
	var rows [][]string
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rows = append(rows, strings.Split(line, "\t"))
	}
	return rows, s.Err()
}

func num(s string) float64 {
	v, _ := strconv.ParseFloat(s, 64) // tables are written by run.sh; a bad cell plots as 0
	return v
}

func median(vs []float64) float64 {
	slices.Sort(vs)
	return vs[len(vs)/2]
}

// throughput: rows "system clients round tps"; the median of the rounds per system and count.
func throughput(rows [][]string) (*plot.Plot, error) {
	samples := map[string]map[float64][]float64{}
	for _, r := range rows {
		system, clients := r[0], num(r[1])
		if samples[system] == nil {
			samples[system] = map[float64][]float64{}
		}
		samples[system][clients] = append(samples[system][clients], num(r[3]))
	}
	p := plot.New()
	p.Title.Text = "Write throughput against concurrent clients"
	p.X.Label.Text = "clients (log)"
	p.Y.Label.Text = "writes per second (median of rounds)"
	p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	p.Y.Min = 0
	var lines []any
	for _, system := range []string{"pgbench baseline", "tally, batching off", "tally, batching on"} {
		var pts plotter.XYs
		for clients, tps := range samples[system] {
			pts = append(pts, plotter.XY{X: clients, Y: median(tps)})
		}
		slices.SortFunc(pts, func(a, b plotter.XY) int { return int(a.X - b.X) })
		lines = append(lines, system, pts)
	}
	return p, plotutil.AddLinePoints(p, lines...)
}

// latency: rows "system offered_rate p50_ms p99_ms p999_ms served_rate" of open-loop write
// runs, several rounds of each rate; each point is the rate's median.
func latency(rows [][]string) (*plot.Plot, error) {
	samples := map[string]map[float64][]float64{}
	for _, r := range rows {
		for _, q := range []struct {
			name   string
			column int
		}{{"p50", 2}, {"p99", 3}} {
			name := r[0] + ", " + q.name
			if samples[name] == nil {
				samples[name] = map[float64][]float64{}
			}
			samples[name][num(r[1])] = append(samples[name][num(r[1])], num(r[q.column]))
		}
	}
	series := map[string]plotter.XYs{}
	for name, byRate := range samples {
		for rate, ms := range byRate {
			series[name] = append(series[name], plotter.XY{X: rate, Y: median(ms)})
		}
		slices.SortFunc(series[name], func(a, b plotter.XY) int { return int(a.X - b.X) })
	}
	p := plot.New()
	p.Title.Text = "Write latency against offered load (open loop)"
	p.X.Label.Text = "offered writes per second"
	// Log: the flat part below saturation and the queues past it differ a thousandfold.
	p.Y.Label.Text = "latency, ms (log)"
	p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	var lines []any
	p.Legend.Top, p.Legend.Left = true, true
	for _, system := range []string{"pgbench baseline", "tally, batching off", "tally, batching on"} {
		for _, q := range []string{"p50", "p99"} {
			name := system + ", " + q
			if pts := series[name]; len(pts) > 0 {
				lines = append(lines, name, pts)
			}
		}
	}
	return p, plotutil.AddLinePoints(p, lines...)
}

// backdating: rows "rows_after ms_per_write".
func backdating(rows [][]string) (*plot.Plot, error) {
	var pts plotter.XYs
	for _, r := range rows {
		// Log scales: an append (0 rows after) is drawn at 1.
		pts = append(pts, plotter.XY{X: max(num(r[0]), 1), Y: num(r[1])})
	}
	p := plot.New()
	p.Title.Text = "Cost of a back-dated write against the rows after it"
	p.X.Label.Text = "transactions after its instant (log; an append is drawn at 1)"
	p.Y.Label.Text = "ms per write, median (log)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	return p, plotutil.AddLinePoints(p, "back-dated deposit", pts)
}
