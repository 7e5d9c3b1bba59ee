package httpapi

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/tally-ledger/tally/ledger"
)

// problemTypePrefix starts every problem type URI; the suffix is stable per error kind.
const problemTypePrefix = "urn:tally:problem:"

// problemKind is one row of the table that turns domain error codes into HTTP answers.
type problemKind struct {
	status int
	slug   string
	title  string
}

// problems is the one map from domain codes to HTTP statuses and problem types.
var problems = map[ledger.Code]problemKind{
	ledger.CodeInvalid:             {http.StatusUnprocessableEntity, "invalid-request", "Invalid request"},
	ledger.CodeNotFound:            {http.StatusNotFound, "not-found", "Not found"},
	ledger.CodeInsufficientFunds:   {http.StatusPaymentRequired, "insufficient-funds", "Insufficient funds"},
	ledger.CodeBalanceLimit:        {http.StatusUnprocessableEntity, "balance-limit-exceeded", "Balance limit exceeded"},
	ledger.CodeIdempotencyConflict: {http.StatusUnprocessableEntity, "idempotency-conflict", "Idempotency key reused"},
	ledger.CodeCursorAhead:         {http.StatusConflict, "cursor-ahead", "Cursor ahead of the stream"},
	ledger.CodeCursorExpired:       {http.StatusGone, "cursor-expired", "Cursor expired"},
	codeBodyTooLarge:               {http.StatusRequestEntityTooLarge, "body-too-large", "Request body too large"},
	codeUnsupportedMedia:           {http.StatusUnsupportedMediaType, "unsupported-media-type", "Unsupported media type"},
	codeMethodNotAllowed:           {http.StatusMethodNotAllowed, "method-not-allowed", "Method not allowed"},
	codeMalformedRequest:           {http.StatusBadRequest, "malformed-request", "Malformed request"},
	codeHeadersTooLarge:            {http.StatusRequestHeaderFieldsTooLarge, "headers-too-large", "Request headers too large"},
	ledger.CodeUnavailable:         {http.StatusServiceUnavailable, "unavailable", "Service unavailable"},
	codeUnauthorized:               {http.StatusUnauthorized, "unauthorized", "Unauthorized"},
	codeForbidden:                  {http.StatusForbidden, "forbidden", "Forbidden"},
	codeInternal:                   {http.StatusInternalServerError, "internal", "Internal error"},
}

// Codes that exist only at the HTTP edge.
const (
	codeBodyTooLarge     ledger.Code = "body_too_large"
	codeUnsupportedMedia ledger.Code = "unsupported_media_type"
	codeMethodNotAllowed ledger.Code = "method_not_allowed"
	codeMalformedRequest ledger.Code = "malformed_request"
	codeHeadersTooLarge  ledger.Code = "headers_too_large"
	codeUnauthorized     ledger.Code = "unauthorized"
	codeForbidden        ledger.Code = "forbidden"
	codeInternal         ledger.Code = "internal"
)

// problem is an RFC 9457 problem details body.
type problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Field    string `json:"field,omitempty"`
	Instance string `json:"instance,omitempty"`
	// Transaction is the refused transaction, for refusals that are recorded.
	Transaction *transactionJSON `json:"transaction,omitempty"`
}

func newProblem(code ledger.Code, detail, field string) (int, problem) {
	k, ok := problems[code]
	if !ok {
		k = problems[codeInternal]
	}
	return k.status, problem{Type: problemTypePrefix + k.slug, Title: k.title, Status: k.status, Detail: detail, Field: field}
}

// writeError answers with the problem for err. Errors that are not the client's are logged
// with the request id and answered without their text.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var e *ledger.Error
	if errors.As(err, &e) {
		if e.Code == ledger.CodeUnavailable {
			log.WarnContext(r.Context(), "database unavailable", "error", err)
			w.Header().Set("Retry-After", "1")
		}
		status, p := newProblem(e.Code, e.Detail, e.Field)
		writeProblem(w, status, p)
		return
	}
	if r.Context().Err() != nil {
		// The client went away; nobody reads the answer.
		log.InfoContext(r.Context(), "request cancelled", "error", err)
		status, p := newProblem(ledger.CodeUnavailable, "the request was cancelled", "")
		writeProblem(w, status, p)
		return
	}
	log.ErrorContext(r.Context(), "internal error", "error", err)
	status, p := newProblem(codeInternal, "internal error; retry with the same uid, it is safe", "")
	writeProblem(w, status, p)
}

func writeProblem(w http.ResponseWriter, status int, p problem) {
	writeBody(w, status, "application/problem+json", mustJSON(p))
}
