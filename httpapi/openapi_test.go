package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/pgtest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/postgres"
)

func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(openAPIDocument)
	require.NoError(t, err)
	require.NoError(t, doc.Validate(loader.Context))
	return doc
}

func TestOpenAPIDocumentIsValid(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	require.Equal(t, "3.0.3", doc.OpenAPI)
}

// TestOpenAPIDocumentsEveryRoute checks that the document and routes.go list the same
// method+path pairs; both use {name} for a path segment, so they compare as text.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	var served, documented []string
	for _, rt := range routes(nil, nil, nil, nil) {
		served = append(served, rt.method+" "+rt.pattern)
	}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	slices.Sort(served)
	slices.Sort(documented)
	require.Equal(t, served, documented, "routes.go and openapi.json disagree")
}

// TestOpenAPIDocumentsOptionalBearer pins what Swagger UI's Authorize and generated clients
// read: every /v1 operation takes a bearer token or none (tokens are off unless TALLY_TOKENS is
// set), and the probes and documents need none, as withAuth serves them.
func TestOpenAPIDocumentsOptionalBearer(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	optional := openapi3.SecurityRequirements{{}, {"bearer": []string{}}}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			t.Run(method+" "+path, func(t *testing.T) {
				effective := doc.Security
				if op.Security != nil {
					effective = *op.Security
				}
				if strings.HasPrefix(path, "/v1/") {
					require.Equal(t, optional, effective)
				} else {
					require.Empty(t, effective)
				}
			})
		}
	}
	require.Contains(t, doc.Components.SecuritySchemes, "bearer")
}

// openAPISession sends requests to a server and checks every exchange against the document:
// the response must be documented for its operation and match its schema, and requests that
// follow the document must pass its validation. It records which documented responses it saw.
type openAPISession struct {
	doc    *openapi3.T
	router routers.Router
	base   string       // the server's URL
	server http.Handler // the same server, for exchanges that bypass the network

	seen map[string]bool // "METHOD /path status", shared by the sessions of one test
}

func newOpenAPISession(t *testing.T, doc *openapi3.T, handler http.Handler) *openAPISession {
	t.Helper()
	router, err := gorillamux.NewRouter(doc)
	require.NoError(t, err)
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return &openAPISession{doc: doc, router: router, base: srv.URL, server: handler, seen: map[string]bool{}}
}

// sharing returns a session on another server that records into the same seen set.
func (s *openAPISession) sharing(t *testing.T, handler http.Handler) *openAPISession {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return &openAPISession{doc: s.doc, router: s.router, base: srv.URL, server: handler, seen: s.seen}
}

// exchange is one request of the scenario.
type exchange struct {
	method, target string // target is the path with its query
	contentType    string
	body           string
	header         map[string]string
	// offSpec marks a request that breaks the document on purpose (a bad id, a malformed
	// body); only its response is checked.
	offSpec bool
	// cancelled sends the request straight to the handler with a cancelled context, as if the
	// client had gone away.
	cancelled bool
}

func (ex exchange) request(ctx context.Context, base string) *http.Request {
	var body io.Reader = http.NoBody
	if ex.body != "" {
		body = strings.NewReader(ex.body)
	}
	req, err := http.NewRequestWithContext(ctx, ex.method, base+ex.target, body)
	if err != nil {
		panic(err)
	}
	if ex.contentType != "" {
		req.Header.Set("Content-Type", ex.contentType)
	}
	for k, v := range ex.header {
		req.Header.Set(k, v)
	}
	return req
}

// expect performs ex, requires status want and a documented response, and returns the body.
func (s *openAPISession) expect(t *testing.T, want int, ex exchange) (http.Header, []byte) {
	t.Helper()
	var (
		status int
		header http.Header
		body   []byte
	)
	if ex.cancelled {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		rec := httptest.NewRecorder()
		s.server.ServeHTTP(rec, ex.request(ctx, "http://tally.test"))
		status, header, body = rec.Code, rec.Header(), rec.Body.Bytes()
	} else {
		resp, err := http.DefaultClient.Do(ex.request(context.Background(), s.base))
		require.NoError(t, err, "%s %s", ex.method, ex.target)
		defer resp.Body.Close()
		body, err = io.ReadAll(resp.Body)
		require.NoError(t, err)
		status, header = resp.StatusCode, resp.Header
	}
	require.Equal(t, want, status, "%s %s answered %s", ex.method, ex.target, body)
	s.check(t, ex, status, header, body)
	return header, body
}

func (s *openAPISession) check(t *testing.T, ex exchange, status int, header http.Header, body []byte) {
	t.Helper()
	what := fmt.Sprintf("%s %s → %d %s", ex.method, ex.target, status, body)
	found, params, err := s.router.FindRoute(ex.request(context.Background(), "http://tally.test"))
	var candidates []*routers.Route
	switch {
	case errors.Is(err, routers.ErrMethodNotAllowed):
		// The answer to a method a path does not serve is documented on each of its operations.
		require.Equal(t, http.StatusMethodNotAllowed, status, what)
		for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodPut} {
			if r, p, err := s.router.FindRoute(exchange{method: method, target: ex.target}.request(context.Background(), "http://tally.test")); err == nil {
				candidates = append(candidates, r)
				params = p
			}
		}
		require.NotEmpty(t, candidates, what)
		ex.offSpec = true
	case errors.Is(err, routers.ErrPathNotFound):
		// No operation to check against: an unknown path still answers with a problem.
		require.Equal(t, http.StatusNotFound, status, what)
		require.Equal(t, "application/problem+json", header.Get("Content-Type"), what)
		var v any
		require.NoError(t, json.Unmarshal(body, &v), what)
		require.NoError(t, s.doc.Components.Schemas["Problem"].Value.VisitJSON(v), what)
		return
	default:
		require.NoError(t, err, what)
		candidates = []*routers.Route{found}
	}
	for _, route := range candidates {
		input := &openapi3filter.RequestValidationInput{
			Request:    ex.request(context.Background(), "http://tally.test"),
			PathParams: params,
			Route:      route,
			Options:    &openapi3filter.Options{AuthenticationFunc: bearerSent},
		}
		if !ex.offSpec {
			require.NoError(t, openapi3filter.ValidateRequest(context.Background(), input), "the document rejects a request the scenario considers valid: %s", what)
		}
		err := openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
			RequestValidationInput: input,
			Status:                 status,
			Header:                 header,
			Body:                   io.NopCloser(bytes.NewReader(body)),
			Options:                &openapi3filter.Options{IncludeResponseStatus: true},
		})
		require.NoError(t, err, "the response does not match the document: %s", what)
		s.seen[route.Method+" "+route.Path+" "+strconv.Itoa(status)] = true
	}
}

// bearerSent satisfies the document's bearer scheme when the request carries a bearer token;
// the server without TALLY_TOKENS accepts requests without one, which the empty requirement
// beside it in the document allows.
func bearerSent(_ context.Context, input *openapi3filter.AuthenticationInput) error {
	scheme, _, _ := strings.Cut(input.RequestValidationInput.Request.Header.Get("Authorization"), " ")
	if input.SecuritySchemeName != "bearer" || !strings.EqualFold(scheme, "Bearer") {
		return fmt.Errorf("no bearer token for %s", input.SecuritySchemeName)
	}
	return nil
}

// requireAllSeen fails for every documented response the scenario did not produce, so that a
// response added to the document is added to the scenario too.
func (s *openAPISession) requireAllSeen(t *testing.T) {
	t.Helper()
	var missing []string
	for path, item := range s.doc.Paths.Map() {
		for method, op := range item.Operations() {
			for status := range op.Responses.Map() {
				if key := method + " " + path + " " + status; !s.seen[key] {
					missing = append(missing, key)
				}
			}
		}
	}
	slices.Sort(missing)
	require.Empty(t, missing, "documented responses the scenario never produced")
}

// openAPIRecord reads the fields the scenario looks at from users, balances and transactions;
// the API's own types only encode.
type openAPIRecord struct {
	ID      int64  `json:"id"`
	UserID  int64  `json:"user_id"`
	Balance string `json:"balance"`
	Amount  string `json:"amount"`
	Status  string `json:"status"`
	AsOf    string `json:"as_of"`
}

type openAPIProblem struct {
	Type        string         `json:"type"`
	Transaction *openAPIRecord `json:"transaction"`
}

func decodeJSON[T any](t *testing.T, body []byte) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(body, &v), "%s", body)
	return v
}

func jsonBody(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestOpenAPIResponsesMatchTheDocument drives a real server on a real database through every
// documented response and checks each exchange against the document.
func TestOpenAPIResponsesMatchTheDocument(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	db, _ := pgtest.NewDB(t)
	log := slog.New(slog.DiscardHandler)
	handler := NewServer(db, log, &Health{})
	s := newOpenAPISession(t, doc, handler)
	const (
		jsonType = "application/json"
		formType = "application/x-www-form-urlencoded"
	)

	// Users.
	_, body := s.expect(t, http.StatusCreated, exchange{method: "POST", target: "/v1/user", contentType: jsonType, body: `{"name": "Alice"}`})
	alice := decodeJSON[openAPIRecord](t, body).ID
	header, body := s.expect(t, http.StatusCreated, exchange{method: "POST", target: "/v1/user", contentType: formType, body: "name=Bob"})
	bob := decodeJSON[openAPIRecord](t, body).ID
	require.Equal(t, fmt.Sprintf("/v1/user/%d", bob), header.Get("Location"))
	_, body = s.expect(t, http.StatusCreated, exchange{method: "POST", target: "/v1/user", contentType: jsonType, body: `{"name": "Rich"}`})
	rich := decodeJSON[openAPIRecord](t, body).ID
	keyed := exchange{method: "POST", target: "/v1/user", contentType: jsonType, body: `{"name": "Carol"}`,
		header: map[string]string{"Idempotency-Key": uuid.NewString()}}
	_, first := s.expect(t, http.StatusCreated, keyed)
	header, replay := s.expect(t, http.StatusCreated, keyed)
	require.Equal(t, "true", header.Get("Idempotent-Replayed"))
	require.Equal(t, string(first), string(replay), "a replay is the first answer, byte for byte")
	keyed.body = `{"name": "Dave"}`
	s.expect(t, http.StatusUnprocessableEntity, keyed) // idempotency conflict
	keyed.header, keyed.offSpec = map[string]string{"Idempotency-Key": "two words"}, true
	s.expect(t, http.StatusUnprocessableEntity, keyed)
	userPath := func(id int64, rest string) string { return fmt.Sprintf("/v1/user/%d%s", id, rest) }

	for _, ex := range []exchange{
		{body: ""},
		{body: `{"name": "   "}`},
		{body: jsonBody(map[string]string{"name": strings.Repeat("x", 201)})},
		{body: `{"name": "Alice"`},
		{body: `{"name": true}`},
	} {
		ex.method, ex.target, ex.contentType = "POST", "/v1/user", jsonType
		ex.offSpec = true // each breaks the NewUser schema or JSON itself
		s.expect(t, http.StatusUnprocessableEntity, ex)
	}
	s.expect(t, http.StatusUnsupportedMediaType, exchange{method: "POST", target: "/v1/user", contentType: "text/plain", body: "Alice", offSpec: true})
	s.expect(t, http.StatusRequestEntityTooLarge, exchange{method: "POST", target: "/v1/user", contentType: jsonType,
		body: jsonBody(map[string]string{"name": strings.Repeat("x", MaxBodyBytes)}), offSpec: true})

	// Transactions: each form of amount and timestamp, JSON and form bodies, POST and PUT.
	deposit := uuid.NewString()
	depositBody := jsonBody(map[string]any{"uid": deposit, "user_id": alice, "type": "DEPOSIT", "amount": 100, "timestamp": "2022-05-01T00:00:00Z"})
	_, first = s.expect(t, http.StatusOK, exchange{method: "POST", target: "/v1/transaction", contentType: jsonType, body: depositBody})
	require.Equal(t, "100.00", decodeJSON[openAPIRecord](t, first).Amount)
	header, replay = s.expect(t, http.StatusOK, exchange{method: "POST", target: "/v1/transaction", contentType: jsonType, body: depositBody})
	require.Equal(t, "true", header.Get("Idempotent-Replayed"))
	require.Equal(t, string(first), string(replay), "a replay is the first answer, byte for byte")
	s.expect(t, http.StatusOK, exchange{method: "PUT", target: "/v1/transaction", contentType: formType,
		header: map[string]string{"Idempotency-Key": uuid.NewString()},
		body:   url.Values{"user_id": {strconv.FormatInt(alice, 10)}, "type": {"WITHDRAW"}, "amount": {"30"}, "timestamp": {"2022-05-10"}}.Encode()})
	s.expect(t, http.StatusOK, exchange{method: "PUT", target: "/v1/transaction", contentType: jsonType,
		body: jsonBody(map[string]any{"uid": uuid.NewString(), "user_id": strconv.FormatInt(alice, 10), "type": "DEPOSIT", "amount": "20.50", "timestamp": "5.05.2022 00:00"})})
	s.expect(t, http.StatusOK, exchange{method: "POST", target: "/v1/transaction", contentType: jsonType,
		body: jsonBody(map[string]any{"uid": uuid.NewString(), "user_id": alice, "type": "DEPOSIT", "amount": "1.25", "timestamp": "2022-05-20T10:00:00+03:00"})})
	s.expect(t, http.StatusOK, exchange{method: "POST", target: "/v1/transaction", contentType: jsonType,
		body: jsonBody(map[string]any{"uid": uuid.NewString(), "user_id": alice, "type": "DEPOSIT", "amount": "2", "timestamp": "2022-05-21T00:00:00"})})
	s.expect(t, http.StatusOK, exchange{method: "PUT", target: "/v1/transaction", contentType: jsonType,
		body: jsonBody(map[string]any{"uid": uuid.NewString(), "user_id": bob, "type": "DEPOSIT", "amount": 1e2})})

	// Refusals are answered, recorded and replayed; the balance never goes below zero.
	overdraft := uuid.NewString()
	overdraftBody := jsonBody(map[string]any{"uid": overdraft, "user_id": alice, "type": "WITHDRAW", "amount": "1000.00"})
	_, refused := s.expect(t, http.StatusPaymentRequired, exchange{method: "POST", target: "/v1/transaction", contentType: jsonType, body: overdraftBody})
	require.Equal(t, "REJECTED", decodeJSON[openAPIProblem](t, refused).Transaction.Status)
	header, _ = s.expect(t, http.StatusPaymentRequired, exchange{method: "PUT", target: "/v1/transaction", contentType: jsonType, body: overdraftBody})
	require.Equal(t, "true", header.Get("Idempotent-Replayed"))
	// Back-dated before the deposits of May 5 and later: it would make May 10 negative.
	s.expect(t, http.StatusPaymentRequired, exchange{method: "PUT", target: "/v1/transaction", contentType: formType,
		body: url.Values{"uid": {uuid.NewString()}, "user_id": {strconv.FormatInt(alice, 10)}, "type": {"WITHDRAW"}, "amount": {"95"}, "timestamp": {"2022-05-02"}}.Encode()})
	// The balance cap (10^15) takes a million maximal deposits to reach; start near it instead.
	_, err := db.Pool().Exec(context.Background(), "UPDATE users SET balance = $1 WHERE id = $2", int64(100_000_000_000_000_000), rich)
	require.NoError(t, err)
	capped := jsonBody(map[string]any{"uid": uuid.NewString(), "user_id": rich, "type": "DEPOSIT", "amount": "0.01"})
	_, body = s.expect(t, http.StatusUnprocessableEntity, exchange{method: "POST", target: "/v1/transaction", contentType: jsonType, body: capped})
	require.Equal(t, "urn:tally:problem:balance-limit-exceeded", decodeJSON[openAPIProblem](t, body).Type)
	s.expect(t, http.StatusUnprocessableEntity, exchange{method: "PUT", target: "/v1/transaction", contentType: jsonType, body: capped})

	for _, method := range []string{"POST", "PUT"} {
		tx := func(fields map[string]any) string {
			body := map[string]any{"uid": uuid.NewString(), "user_id": alice, "type": "DEPOSIT", "amount": "1.00"}
			for k, v := range fields {
				if v == nil {
					delete(body, k)
				} else {
					body[k] = v
				}
			}
			return jsonBody(body)
		}
		for _, ex := range []exchange{
			{body: tx(map[string]any{"amount": "0.001"}), offSpec: true},
			{body: tx(map[string]any{"amount": 0}), offSpec: true},
			{body: tx(map[string]any{"amount": "-5"}), offSpec: true},
			{body: tx(map[string]any{"type": "TRANSFER"}), offSpec: true},
			{body: tx(map[string]any{"user_id": 0}), offSpec: true},
			{body: tx(map[string]any{"uid": "42"}), offSpec: true},
			{body: tx(map[string]any{"timestamp": "yesterday"})},
			{body: tx(map[string]any{"timestamp": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})},
			{body: tx(map[string]any{"uid": nil})},
			{body: tx(nil), header: map[string]string{"Idempotency-Key": uuid.NewString()}},
			{body: tx(map[string]any{"uid": deposit, "amount": "99.00"})}, // idempotency conflict
			{body: `[1, 2]`, offSpec: true},
		} {
			ex.method, ex.target, ex.contentType = method, "/v1/transaction", jsonType
			s.expect(t, http.StatusUnprocessableEntity, ex)
		}
		s.expect(t, http.StatusNotFound, exchange{method: method, target: "/v1/transaction", contentType: jsonType, body: tx(map[string]any{"user_id": 999999})})
		s.expect(t, http.StatusUnsupportedMediaType, exchange{method: method, target: "/v1/transaction", contentType: "text/csv", body: "a,b", offSpec: true})
		s.expect(t, http.StatusRequestEntityTooLarge, exchange{method: method, target: "/v1/transaction", contentType: formType,
			body: "note=" + strings.Repeat("x", MaxBodyBytes), offSpec: true})
	}

	// Reads.
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: userPath(alice, "")})
	require.Equal(t, "93.75", decodeJSON[openAPIRecord](t, body).Balance)
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: userPath(alice, "?date=") + url.QueryEscape("5.05.2022 00:00")})
	require.Equal(t, "120.50", decodeJSON[openAPIRecord](t, body).Balance)
	s.expect(t, http.StatusOK, exchange{method: "GET", target: userPath(alice, "/balance")})
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: userPath(alice, "/balance?date=2022-05-10T00:00:00%2B00:00")})
	require.Equal(t, openAPIRecord{UserID: alice, Balance: "90.50", AsOf: "2022-05-10T00:00:00Z"}, decodeJSON[openAPIRecord](t, body))
	s.expect(t, http.StatusOK, exchange{method: "GET", target: "/v1/transaction/" + deposit})
	s.expect(t, http.StatusOK, exchange{method: "GET", target: "/v1/transaction/" + overdraft})

	type historyPage struct {
		Items      []openAPIRecord `json:"items"`
		NextCursor *string         `json:"next_cursor"`
	}
	var pages []historyPage
	for cursor := ""; ; {
		target := userPath(alice, "/transactions?limit=2&from=2022-01-01&to=2022-12-31T23:59:59Z")
		if cursor != "" {
			target += "&cursor=" + cursor
		}
		_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: target})
		page := decodeJSON[historyPage](t, body)
		pages = append(pages, page)
		if page.NextCursor == nil {
			break
		}
		cursor = *page.NextCursor
	}
	require.Len(t, pages, 3, "five applied transactions in pages of two")
	s.expect(t, http.StatusOK, exchange{method: "GET", target: userPath(bob, "/transactions")})
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: userPath(alice, "/transactions?status=ALL")})
	require.Len(t, decodeJSON[historyPage](t, body).Items, 7, "five applied, two refused")
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: userPath(alice, "/transactions?status=REJECTED&limit=1")})
	require.Equal(t, "REJECTED", decodeJSON[historyPage](t, body).Items[0].Status)

	// The console's reads: users by name prefix, the balance series.
	type userPage struct {
		Items      []openAPIRecord `json:"items"`
		NextCursor *string         `json:"next_cursor"`
	}
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: "/v1/users?limit=2"})
	users := decodeJSON[userPage](t, body)
	require.Len(t, users.Items, 2)
	require.NotNil(t, users.NextCursor)
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: "/v1/users?limit=2&cursor=" + *users.NextCursor})
	require.Len(t, decodeJSON[userPage](t, body).Items, 2, "Alice, Bob, then Carol and Rich")
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: "/v1/users?name=" + url.QueryEscape("Ca")})
	require.Equal(t, []openAPIRecord{{ID: decodeJSON[userPage](t, body).Items[0].ID, Balance: "0.00"}}, decodeJSON[userPage](t, body).Items)
	type seriesBody struct {
		From   string `json:"from"`
		Points []struct {
			At          string         `json:"at"`
			Balance     string         `json:"balance"`
			Transaction *openAPIRecord `json:"transaction"`
		} `json:"points"`
	}
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: userPath(alice, "/balance/series?from=2022-05-01&to=2022-05-31&points=31")})
	series := decodeJSON[seriesBody](t, body)
	require.Len(t, series.Points, 31)
	require.Equal(t, "2022-05-05T00:00:00Z", series.Points[4].At)
	require.Equal(t, "120.50", series.Points[4].Balance, "the balance at 5.05.2022, as GET /v1/user/{id}?date= says")
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: userPath(alice, "/balance/series")})
	series = decodeJSON[seriesBody](t, body)
	require.Len(t, series.Points, 200)
	require.Equal(t, "2022-05-01T00:00:00Z", series.From, "from defaults to the first transaction")
	require.Equal(t, "100.00", series.Points[0].Balance, "the first point is the first transaction's instant")
	require.NotNil(t, series.Points[0].Transaction)

	for _, target := range []string{userPath(999999, ""), userPath(999999, "/balance"), userPath(999999, "/transactions"), "/v1/transaction/" + uuid.NewString(),
		userPath(999999, "/balance/series"), userPath(999999, "/balance/series?from=2020-01-01")} {
		s.expect(t, http.StatusNotFound, exchange{method: "GET", target: target})
	}
	for _, ex := range []exchange{
		{target: "/v1/user/0", offSpec: true},
		{target: "/v1/user/abc", offSpec: true},
		{target: userPath(alice, "?date=yesterday")},
		{target: "/v1/user/-1/balance", offSpec: true},
		{target: userPath(alice, "/balance?date=2022-13-01")},
		{target: userPath(alice, "/transactions?limit=0"), offSpec: true},
		{target: userPath(alice, "/transactions?limit=1001"), offSpec: true},
		{target: userPath(alice, "/transactions?cursor=nope")},
		{target: userPath(alice, "/transactions?from=31.02.2022")},
		{target: "/v1/user/x/transactions", offSpec: true},
		{target: "/v1/transaction/42", offSpec: true},
		{target: userPath(alice, "/transactions?status=applied"), offSpec: true},
		{target: "/v1/users?limit=0", offSpec: true},
		{target: "/v1/users?limit=101", offSpec: true},
		{target: "/v1/users?cursor=nope"},
		{target: "/v1/users?name=%FF"},
		{target: "/v1/users?name=" + strings.Repeat("x", 201), offSpec: true},
		{target: userPath(alice, "/balance/series?points=1"), offSpec: true},
		{target: userPath(alice, "/balance/series?points=1001"), offSpec: true},
		{target: userPath(alice, "/balance/series?from=2023-01-02&to=2023-01-01")},
		{target: userPath(alice, "/balance/series?from=2023-01-01&to=2023-01-01")},
		{target: userPath(alice, "/balance/series?to=soon")},
	} {
		ex.method = "GET"
		s.expect(t, http.StatusUnprocessableEntity, ex)
	}

	// The event feed: a first page, the next from its cursor, bad parameters.
	_, body = s.expect(t, http.StatusOK, exchange{method: "GET", target: "/v1/events?limit=2"})
	page := decodeJSON[struct {
		NextCursor string `json:"next_cursor"`
		Next       string
	}](t, body)
	require.Equal(t, page.NextCursor, page.Next)
	s.expect(t, http.StatusOK, exchange{method: "GET", target: "/v1/events?wait=0.05&cursor=" + page.NextCursor})
	s.expect(t, http.StatusOK, exchange{method: "GET", target: "/v1/events?after=" + page.Next})
	s.expect(t, http.StatusConflict, exchange{method: "GET", target: "/v1/events?cursor=" + encodeEventCursor(ledger.EventCursor{TxID: 1 << 40})})
	// As if the relay had published and pruned every event written so far.
	pruned, err := db.PruneEvents(context.Background(), time.Now().Add(time.Hour), ledger.EventCursor{TxID: 1 << 40})
	require.NoError(t, err)
	require.Positive(t, pruned)
	s.expect(t, http.StatusGone, exchange{method: "GET", target: "/v1/events?cursor=" + encodeEventCursor(ledger.EventCursor{})})
	for _, target := range []string{"/v1/events?limit=0", "/v1/events?after=nope", "/v1/events?wait=99", "/v1/events?wait=1_0", "/v1/events?wait=0x1p-2", "/v1/events?wait=1e1"} {
		s.expect(t, http.StatusUnprocessableEntity, exchange{method: "GET", target: target, offSpec: true})
	}

	// Every path answers other methods with 405 and an Allow header.
	for _, target := range []string{"/v1/user", userPath(alice, ""), userPath(alice, "/balance"), userPath(alice, "/transactions"),
		"/v1/transaction", "/v1/transaction/" + deposit, "/v1/events", "/healthz", "/readyz", "/api/openapi.json", "/api/docs", "/api/docs/init.js",
		"/v1/users", userPath(alice, "/balance/series"), "/console", "/console/users/1", "/console/console.js"} {
		header, _ := s.expect(t, http.StatusMethodNotAllowed, exchange{method: "DELETE", target: target})
		require.NotEmpty(t, header.Get("Allow"), target)
	}
	s.expect(t, http.StatusNotFound, exchange{method: "GET", target: "/v2/user"})

	// Operations and docs.
	s.expect(t, http.StatusOK, exchange{method: "GET", target: "/healthz"})
	s.expect(t, http.StatusOK, exchange{method: "GET", target: "/readyz"})
	s.expect(t, http.StatusOK, exchange{method: "GET", target: "/api/openapi.json"})
	s.expect(t, http.StatusOK, exchange{method: "GET", target: "/api/docs"})
	for _, file := range []string{"index.html", "swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "LICENSE"} {
		s.expect(t, http.StatusOK, exchange{method: "GET", target: "/api/docs/" + file})
	}
	s.expect(t, http.StatusPartialContent, exchange{method: "GET", target: "/api/docs/swagger-ui.css", header: map[string]string{"Range": "bytes=0-99"}})
	s.expect(t, http.StatusRequestedRangeNotSatisfiable, exchange{method: "GET", target: "/api/docs/swagger-ui.css", header: map[string]string{"Range": "bytes=99999999-"}})
	s.expect(t, http.StatusNotFound, exchange{method: "GET", target: "/api/docs/missing.js"})
	for _, target := range []string{"/console", "/console/users/1", "/console/console.js", "/console/console.css", "/console/uPlot.LICENSE"} {
		header, _ := s.expect(t, http.StatusOK, exchange{method: "GET", target: target})
		require.Contains(t, header.Get("Content-Security-Policy"), "script-src 'self'", target)
	}
	s.expect(t, http.StatusNotFound, exchange{method: "GET", target: "/console/missing.js"})
	s.expect(t, http.StatusNotFound, exchange{method: "GET", target: "/console/index.html"})
	s.expect(t, http.StatusNotFound, exchange{method: "GET", target: "/api/docs/..%2Fopenapi.json", offSpec: true})

	// A server shutting down is not ready.
	health := &Health{}
	health.ShutDown()
	closing := s.sharing(t, NewServer(db, log, health))
	_, body = closing.expect(t, http.StatusServiceUnavailable, exchange{method: "GET", target: "/readyz"})
	require.Equal(t, map[string]string{"status": "shutting down"}, decodeJSON[map[string]string](t, body))

	// A database that is gone: not ready, and every store call is an internal error. (With
	// batching on, a closed store's writes are 503 instead: it is shutting down; see below.)
	gone, err := postgres.Open(context.Background(), pgtest.NewDatabase(t), postgres.WithWriteBatching(1, 1))
	require.NoError(t, err)
	gone.Close()
	broken := s.sharing(t, NewServer(gone, log, &Health{}))
	_, body = broken.expect(t, http.StatusServiceUnavailable, exchange{method: "GET", target: "/readyz"})
	require.Equal(t, map[string]string{"status": "database not ready"}, decodeJSON[map[string]string](t, body))
	storeCalls := []exchange{
		{method: "POST", target: "/v1/user", contentType: jsonType, body: `{"name": "Carol"}`},
		{method: "GET", target: userPath(alice, "")},
		{method: "GET", target: userPath(alice, "/balance")},
		{method: "GET", target: userPath(alice, "/transactions")},
		{method: "POST", target: "/v1/transaction", contentType: jsonType, body: jsonBody(map[string]any{"uid": uuid.NewString(), "user_id": alice, "type": "DEPOSIT", "amount": "1"})},
		{method: "PUT", target: "/v1/transaction", contentType: jsonType, body: jsonBody(map[string]any{"uid": uuid.NewString(), "user_id": alice, "type": "DEPOSIT", "amount": "1"})},
		{method: "GET", target: "/v1/transaction/" + deposit},
		{method: "GET", target: "/v1/events"},
		{method: "GET", target: "/v1/users"},
		{method: "GET", target: userPath(alice, "/balance/series?from=2020-01-01")},
		{method: "GET", target: userPath(alice, "/balance/series")},
	}
	for _, ex := range storeCalls {
		_, body = broken.expect(t, http.StatusInternalServerError, ex)
		require.NotContains(t, string(body), "closed", "no internal error text reaches the client")
	}
	stoppedDB, _ := pgtest.NewDB(t)
	stoppedDB.Close()
	stopped := s.sharing(t, NewServer(stoppedDB, log, &Health{}))
	for _, method := range []string{"POST", "PUT"} {
		stopped.expect(t, http.StatusServiceUnavailable, exchange{method: method, target: "/v1/transaction", contentType: jsonType,
			body: jsonBody(map[string]any{"uid": uuid.NewString(), "user_id": alice, "type": "DEPOSIT", "amount": "1"})})
	}
	// A client that went away before the store answered.
	for _, ex := range storeCalls {
		ex.cancelled = true
		s.expect(t, http.StatusServiceUnavailable, ex)
	}

	// Only the per-user feed on Citus answers an unknown user (TestCitusUserFeed); this
	// scenario runs on one PostgreSQL.
	s.seen["GET /v1/events 404"] = true
	s.requireAllSeen(t)
}
