package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tally-ledger/tally/httpapi"
)

// version is set at build time with -ldflags "-X main.version=..."; otherwise it comes from
// the module's build information.
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" {
		return info.Main.Version
	}
	return "dev"
}

// newRegistry holds the process's metrics: Go runtime, process, build info.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tally_build_info", Help: "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": buildVersion()},
	})
	info.Set(1)
	reg.MustRegister(info)
	return reg
}

// startAdmin serves /metrics, /healthz, /readyz (the ready handler) and /debug/pprof/ on the
// admin port, apart from the API, so that probes and scrapes stay open when the API requires
// tokens. It returns the bound address and a function that stops it.
func startAdmin(ctx context.Context, port string, log *slog.Logger, reg *prometheus.Registry, ready http.Handler) (string, func(), error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	// Profiles for diagnosis; the admin port is not exposed outside the cluster.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n")) //nolint:errcheck // the prober may be gone
	})
	mux.Handle("GET /readyz", ready)
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", ":"+port)
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second, MaxHeaderBytes: httpapi.MaxHeaderBytes}
	go srv.Serve(ln) //nolint:errcheck // ends with Close below
	log.Info("admin listening", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
	return ln.Addr().String(), func() { srv.Close() }, nil //nolint:errcheck
}
