package httpapi

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/tally-ledger/tally/web"
)

// route is one entry of the API; the OpenAPI test walks this list.
type route struct {
	method, pattern string
	handler         http.Handler
}

// routes is the whole API on one screen.
func routes(store Store, log *slog.Logger, health *Health, m *Metrics) []route {
	return []route{
		{"POST", "/v1/user", handleCreateUser(store, log)},
		{"GET", "/v1/user/{id}", handleGetUser(store, log)},
		{"GET", "/v1/user/{id}/balance", handleGetBalance(store, log)},
		{"GET", "/v1/user/{id}/balance/series", handleBalanceSeries(store, log)},
		{"GET", "/v1/user/{id}/transactions", handleListTransactions(store, log)},
		{"GET", "/v1/users", handleListUsers(store, log)},
		{"POST", "/v1/transaction", handleCreateTransaction(store, log, m)},
		{"PUT", "/v1/transaction", handleCreateTransaction(store, log, m)},
		{"GET", "/v1/transaction/{uid}", handleGetTransaction(store, log)},
		{"GET", "/v1/events", handleEvents(store, log, health)},
		{"GET", "/healthz", handleHealthz()},
		{"GET", "/readyz", ReadyHandler(health, log, func(ctx context.Context) error { return store.Ready(ctx) })},
		{"GET", "/api/openapi.json", handleOpenAPI()},
		{"GET", "/api/docs", handleDocs()},
		{"GET", "/api/docs/{file}", handleDocs()},
		{"GET", "/console", web.Page()},
		{"GET", "/console/users/{id}", web.Page()},
		{"GET", "/console/{file}", web.Files(handleNotFound())},
	}
}
