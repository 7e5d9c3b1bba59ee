package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracer makes an OpenTelemetry span of every query and batch. With no tracer provider set
// (OTEL_EXPORTER_OTLP_ENDPOINT unset) the spans are no-ops.
type tracer struct{}

var otelTracer = otel.Tracer("github.com/tally-ledger/tally/postgres")

func (tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	ctx, _ = otelTracer.Start(ctx, "postgres.query", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("db.system", "postgresql"), attribute.String("db.statement", data.SQL)))
	return ctx
}

func (tracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	end(ctx, data.Err)
}

func (tracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	ctx, _ = otelTracer.Start(ctx, "postgres.batch", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("db.system", "postgresql"), attribute.Int("db.batch.size", data.Batch.Len())))
	return ctx
}

func (tracer) TraceBatchQuery(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	if data.Err != nil {
		trace.SpanFromContext(ctx).AddEvent("query failed", trace.WithAttributes(attribute.String("db.statement", data.SQL)))
	}
}

func (tracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchEndData) {
	end(ctx, data.Err)
}

func end(ctx context.Context, err error) {
	span := trace.SpanFromContext(ctx)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "query failed")
	}
	span.End()
}

// batchContext is the context a batch of writes runs in. It outlives the members' requests
// and, when they are traced, carries a span under the first member's with a link to each.
func batchContext(batch []*writeRequest) (context.Context, func()) {
	ctx := context.WithoutCancel(batch[0].ctx)
	var links []trace.Link
	for _, w := range batch {
		if sc := trace.SpanContextFromContext(w.ctx); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	if len(links) == 0 {
		return ctx, func() {}
	}
	ctx, span := otelTracer.Start(ctx, "postgres.write_batch", trace.WithLinks(links...),
		trace.WithAttributes(attribute.Int("tally.write_batch.size", len(batch))))
	return ctx, func() { span.End() }
}
