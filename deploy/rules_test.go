package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tally-ledger/tally/internal/devenv"
	"github.com/tally-ledger/tally/internal/pgtest"
)

// The SLOs, by the slo label of their recorded error ratios, with the error budget each
// allows (1 − objective), written as the alerts write it.
var slos = map[string]string{"availability": "0.001", "probe": "0.001", "latency": "0.01"}

// The SRE workbook's multiwindow, multi-burn-rate alerts: each pair of windows with the burn
// rate at which both must exceed the budget. Pages: 2% of a 30-day budget in an hour, 5% in six
// hours; a ticket: 10% in three days.
var burnRates = []struct {
	long, short, factor, severity string
}{
	{long: "1h", short: "5m", factor: "14.4", severity: "critical"},
	{long: "6h", short: "30m", factor: "6", severity: "critical"},
	{long: "3d", short: "6h", factor: "1", severity: "warning"},
}

const sloErrors = "tally:slo_errors:ratio_rate"

// checkBurnRates requires, for every SLO, its error ratio recorded over every window the
// alerts read, and the page and ticket alerts in the workbook's shape.
func checkBurnRates(t *testing.T, m manifests) {
	recorded := map[string]map[string]bool{} // slo → windows
	type alert struct{ expr, severity string }
	var alerts []alert
	for _, pr := range m.rules {
		for _, g := range pr.Spec.Groups {
			for _, r := range g.Rules {
				if window, ok := strings.CutPrefix(r.Record, sloErrors); ok {
					slo := r.Labels["slo"]
					require.Contains(t, slos, slo, "%s records an SLO with no budget here", r.Record)
					if recorded[slo] == nil {
						recorded[slo] = map[string]bool{}
					}
					require.False(t, recorded[slo][window], "%s{slo=%q} recorded twice", r.Record, slo)
					recorded[slo][window] = true
				}
				if r.Alert != "" {
					alerts = append(alerts, alert{expr: normalizeExpr(r.Expr), severity: r.Labels["severity"]})
				}
			}
		}
	}
	require.Len(t, recorded, len(slos), "SLOs with recorded error ratios")
	for slo, budget := range slos {
		for _, br := range burnRates {
			require.True(t, recorded[slo][br.long] && recorded[slo][br.short], "%s: error ratio over %s and %s", slo, br.long, br.short)
			pair := fmt.Sprintf("%[1]s%[2]s{slo=%[4]q} > (%[5]s * %[6]s) and %[1]s%[3]s{slo=%[4]q} > (%[5]s * %[6]s)",
				sloErrors, br.long, br.short, slo, br.factor, budget)
			require.True(t, slices.ContainsFunc(alerts, func(a alert) bool {
				return a.severity == br.severity && strings.Contains(a.expr, pair)
			}), "no %s alert on %s burning %s× its budget over %s and %s: want an expression with\n%s", br.severity, slo, br.factor, br.long, br.short, pair)
		}
	}
}

var (
	spaces       = regexp.MustCompile(`\s+`)
	spaceInParen = regexp.MustCompile(`\( | \)`)
)

// normalizeExpr puts an expression on one line with single spaces and none inside parentheses.
func normalizeExpr(expr string) string {
	s := spaces.ReplaceAllString(strings.TrimSpace(expr), " ")
	return spaceInParen.ReplaceAllStringFunc(s, func(m string) string { return strings.TrimSpace(m) })
}

// checkProbe requires the probe SLO's source: the API's Service, in the overlay's namespace,
// on the path the API serves without a token.
func checkProbe(t *testing.T, m manifests, namespace string) {
	require.Len(t, m.probes, 1)
	p := m.probes[0]
	require.Equal(t, prometheusRelease, p.Labels["release"], "Probe %s", p.Name)
	require.NotEmpty(t, p.Spec.JobName)
	require.NotEmpty(t, p.Spec.Module)
	require.NotEmpty(t, p.Spec.Prober.URL)
	require.Equal(t, []string{fmt.Sprintf("http://tally-api.%s.svc:8000/readyz", namespace)}, p.Spec.Targets.StaticConfig.Static)
	svc := slices.IndexFunc(m.services, func(s *corev1.Service) bool { return s.Name == "tally-api" })
	require.NotEqual(t, -1, svc)
	require.True(t, slices.ContainsFunc(m.services[svc].Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == 8000 }))
}

// A PromQL selector as the rules write it: a metric name and its label matchers.
type selector struct {
	metric   string
	matchers []matcher
}

type matcher struct{ label, op, value string }

// PromQL's aggregation operators, which may take their by or without clause first.
var promqlAggregations = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// PromQL's keywords; those that take a label list in parentheses skip it.
var promqlKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "offset": true, "and": true, "or": true, "unless": true, "atan2": true,
}

// selectors lists the vector selectors of a PromQL expression. It reads the subset the rules
// use (promtool, in TestRulesPromtool, parses them in full): names, label matchers, function
// calls, label lists, range brackets, numbers and strings.
func selectors(expr string) ([]selector, error) {
	var out []selector
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			_, n, err := readString(expr[i:])
			if err != nil {
				return nil, err
			}
			i += n
		case c == '[':
			end := strings.IndexByte(expr[i:], ']')
			if end < 0 {
				return nil, fmt.Errorf("unclosed [ at %d", i)
			}
			i += end + 1
		case c == '#':
			end := strings.IndexByte(expr[i:], '\n')
			if end < 0 {
				return out, nil
			}
			i += end
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isIdentChar(expr[i]) || expr[i] == '.') {
				i++
			}
		case isIdentChar(c):
			j := i
			for j < len(expr) && isIdentChar(expr[j]) {
				j++
			}
			word := expr[i:j]
			k := j
			for k < len(expr) && (expr[k] == ' ' || expr[k] == '\n' || expr[k] == '\t') {
				k++
			}
			next := byte(0)
			if k < len(expr) {
				next = expr[k]
			}
			switch {
			case promqlKeywords[word]:
				i = j
				if next == '(' && word != "and" && word != "or" && word != "unless" && word != "atan2" {
					end := strings.IndexByte(expr[k:], ')')
					if end < 0 {
						return nil, fmt.Errorf("unclosed label list after %s", word)
					}
					i = k + end + 1
				}
			case next == '(' || promqlAggregations[word]:
				i = j // a function or an aggregation
			default:
				sel := selector{metric: word}
				i = j
				if next == '{' {
					ms, n, err := readMatchers(expr[k:])
					if err != nil {
						return nil, fmt.Errorf("%s: %w", word, err)
					}
					sel.matchers = ms
					i = k + n
				}
				out = append(out, sel)
			}
		default:
			i++
		}
	}
	return out, nil
}

func isIdentChar(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// readString reads the quoted string at the start of s; n is its length in s.
func readString(s string) (value string, n int, err error) {
	quote := s[0]
	for n = 1; n < len(s); n++ {
		switch s[n] {
		case '\\':
			if quote != '`' {
				n++
			}
		case quote:
			switch quote {
			case '`':
				value = s[1:n]
			case '"':
				value, err = strconv.Unquote(s[:n+1])
			default: // single quotes: the same escapes as double quotes, with \' for '
				inner := strings.ReplaceAll(strings.ReplaceAll(s[1:n], `\'`, `'`), `"`, `\"`)
				value, err = strconv.Unquote(`"` + inner + `"`)
			}
			return value, n + 1, err
		}
	}
	return "", 0, fmt.Errorf("unclosed string %s", s)
}

// readMatchers reads {label op "value", ...} at the start of s.
func readMatchers(s string) ([]matcher, int, error) {
	var out []matcher
	i := 1
	for {
		for i < len(s) && strings.ContainsRune(" \n\t,", rune(s[i])) {
			i++
		}
		if i >= len(s) {
			return nil, 0, fmt.Errorf("unclosed {")
		}
		if s[i] == '}' {
			return out, i + 1, nil
		}
		j := i
		for j < len(s) && isIdentChar(s[j]) {
			j++
		}
		label := s[i:j]
		for j < len(s) && s[j] == ' ' {
			j++
		}
		op := ""
		for _, candidate := range []string{"=~", "!~", "!=", "="} {
			if strings.HasPrefix(s[j:], candidate) {
				op = candidate
				break
			}
		}
		if label == "" || op == "" {
			return nil, 0, fmt.Errorf("bad matcher at %q", s[i:])
		}
		j += len(op)
		for j < len(s) && s[j] == ' ' {
			j++
		}
		if j >= len(s) {
			return nil, 0, fmt.Errorf("matcher %s%s has no value", label, op)
		}
		value, n, err := readString(s[j:])
		if err != nil {
			return nil, 0, err
		}
		out = append(out, matcher{label: label, op: op, value: value})
		i = j + n
	}
}

func TestSelectors(t *testing.T) {
	t.Parallel()
	got, err := selectors(`sum by (namespace, le) (rate(http_request_duration_seconds_bucket{job="tally-api", route!~"GET /(a|b)", le="0.5"}[5m]))
	  / on (namespace) group_left ()
	absent(up{job='x'}) > (14.4 * 0.001) and tally:x:ratio_rate1h{slo="a"} # up{job="comment"}
	or vector(1) unless foo offset 5m`)
	require.NoError(t, err)
	require.Equal(t, []selector{
		{metric: "http_request_duration_seconds_bucket", matchers: []matcher{
			{label: "job", op: "=", value: "tally-api"}, {label: "route", op: "!~", value: "GET /(a|b)"}, {label: "le", op: "=", value: "0.5"}}},
		{metric: "up", matchers: []matcher{{label: "job", op: "=", value: "x"}}},
		{metric: "tally:x:ratio_rate1h", matchers: []matcher{{label: "slo", op: "=", value: "a"}}},
		{metric: "foo"},
	}, got)
	_, err = selectors(`up{job="x"`)
	require.Error(t, err)
}

// Labels Prometheus gives every series it scrapes from a ServiceMonitor's target.
var targetLabels = []string{"namespace", "job", "pod", "instance", "service", "container", "endpoint"}

// Series tally does not export, that the rules read from elsewhere, with their labels.
var externalMetrics = map[string][]string{
	"up":            {"namespace", "job"}, // Prometheus, per target
	"probe_success": {"namespace", "job"}, // the blackbox exporter, via the Probe
	"kube_deployment_status_replicas_available": {"namespace", "deployment"},            // kube-state-metrics
	"kube_pod_status_ready":                     {"namespace", "pod", "condition"},      // kube-state-metrics
	"kube_job_status_start_time":                {"namespace", "job_name"},              // kube-state-metrics
	"kube_job_failed":                           {"namespace", "job_name", "condition"}, // kube-state-metrics
	"kube_job_complete":                         {"namespace", "job_name", "condition"}, // kube-state-metrics
}

// checkRuleSelectors requires every selector of every rule to name a series that exists with
// labels and values that exist: tally's own metrics as live (from a running tally's /metrics;
// nil skips those), the others as the objects rendered here name them. Every selector of a
// raw series names the overlay's namespace, so that another tally's series cannot fire them.
func checkRuleSelectors(t *testing.T, m manifests, namespace string, live map[string]*dto.MetricFamily) {
	recorded := map[string]map[string][]string{} // record → label → values
	for _, pr := range m.rules {
		for _, g := range pr.Spec.Groups {
			for _, r := range g.Rules {
				if r.Record == "" {
					continue
				}
				if recorded[r.Record] == nil {
					recorded[r.Record] = map[string][]string{}
				}
				for k, v := range r.Labels {
					recorded[r.Record][k] = append(recorded[r.Record][k], v)
				}
			}
		}
	}
	jobs := map[string][]string{} // the job label's values, by the metric's source
	for _, sm := range m.serviceMonitors {
		for _, svc := range m.services {
			if selects(t, &sm.Spec.Selector, svc.Labels) {
				jobs["tally"] = append(jobs["tally"], svc.Name)
			}
		}
	}
	for _, p := range m.probes {
		jobs["probe"] = append(jobs["probe"], p.Spec.JobName)
	}
	var deployments, pods, jobNames []string
	for _, d := range m.deployments {
		deployments = append(deployments, d.Name)
		pods = append(pods, d.Name+"-5d8c7b9f4d-x2x7k") // a ReplicaSet's hash and a pod's suffix
	}
	for _, j := range m.jobs {
		jobNames = append(jobNames, j.Name)
	}
	statuses := []string{"other"}
	for code := 100; code <= 599; code++ {
		statuses = append(statuses, strconv.Itoa(code))
	}

	for _, pr := range m.rules {
		for _, g := range pr.Spec.Groups {
			for _, r := range g.Rules {
				name := r.Alert + r.Record
				sels, err := selectors(r.Expr)
				require.NoError(t, err, name)
				require.NotEmpty(t, sels, name)
				for _, sel := range sels {
					where := name + ": " + sel.metric
					if labels, ok := recorded[sel.metric]; ok {
						for _, mt := range sel.matchers {
							requireMatches(t, where, mt, labels[mt.label])
						}
						continue
					}
					var allowed []string
					values := map[string][]string{"namespace": {namespace}}
					family, external := externalMetrics[sel.metric]
					switch {
					case external:
						allowed = family
						values["deployment"], values["pod"], values["job_name"], values["condition"] = deployments, pods, jobNames, []string{"true"}
						values["job"] = jobs["tally"]
						if sel.metric == "probe_success" {
							values["job"] = jobs["probe"]
						}
					default:
						allowed = slices.Clone(targetLabels)
						values["job"] = jobs["tally"]
						values["status"] = statuses
						if live != nil {
							mf := liveFamily(live, sel.metric)
							require.NotNil(t, mf, "%s: tally exports no such metric", where)
							for _, metric := range mf.Metric {
								for _, lp := range metric.Label {
									if !slices.Contains(allowed, lp.GetName()) {
										allowed = append(allowed, lp.GetName())
									}
									if lp.GetName() != "status" {
										values[lp.GetName()] = append(values[lp.GetName()], lp.GetValue())
									}
								}
							}
							if strings.HasSuffix(sel.metric, "_bucket") {
								allowed = append(allowed, "le")
								for _, metric := range mf.Metric {
									for _, b := range metric.GetHistogram().GetBucket() {
										values["le"] = append(values["le"], strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64))
									}
								}
							}
						}
					}
					ns := slices.IndexFunc(sel.matchers, func(mt matcher) bool { return mt.label == "namespace" })
					require.NotEqual(t, -1, ns, "%s: no namespace matcher", where)
					require.Equal(t, matcher{label: "namespace", op: "=", value: namespace}, sel.matchers[ns], where)
					for _, mt := range sel.matchers {
						if external || live != nil {
							require.Contains(t, allowed, mt.label, "%s: no such label", where)
						}
						if vs, known := values[mt.label]; known {
							requireMatches(t, where, mt, vs)
						} else {
							require.Nil(t, live, "%s: label %s has no known values", where, mt.label)
						}
					}
				}
			}
		}
	}
}

// liveFamily finds a metric in a scrape: a histogram's _bucket, _count and _sum series are
// its family's.
func liveFamily(live map[string]*dto.MetricFamily, metric string) *dto.MetricFamily {
	if mf, ok := live[metric]; ok {
		return mf
	}
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		if base, ok := strings.CutSuffix(metric, suffix); ok {
			if mf, ok := live[base]; ok && mf.GetType() == dto.MetricType_HISTOGRAM {
				return mf
			}
		}
	}
	return nil
}

// requireMatches requires a matcher to select at least one of the values the label can take.
// A negative matcher must exclude at least one: route!~"/healthz" against routes named
// "GET /healthz" excludes nothing, which is the mistake this catches.
func requireMatches(t *testing.T, where string, mt matcher, values []string) {
	t.Helper()
	match := func(v string) bool { return v == mt.value }
	if mt.op == "=~" || mt.op == "!~" {
		re, err := regexp.Compile("^(?:" + mt.value + ")$")
		require.NoError(t, err, where)
		match = re.MatchString
	}
	require.True(t, slices.ContainsFunc(values, match), "%s: %s%s%q matches none of %v; negated or not, the matcher must match some value", where, mt.label, mt.op, mt.value, values)
}

// A tally serve --relay, as the binary is built for release, exports every metric and label
// value the rules read: checked against its live /metrics after a request on every route the
// rules name. Its tally_build_info carries the version the build stamped.
func TestRulesAgainstLiveMetrics(t *testing.T) {
	t.Parallel()
	m := render(t, "prod")
	bin := buildTally(t, "v9.8.7-test")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	port, err := devenv.FreePort(ctx)
	require.NoError(t, err)
	adminPort, err := devenv.FreePort(ctx)
	require.NoError(t, err)
	cmd := exec.CommandContext(ctx, bin, "serve", "--relay")
	databaseURL := pgtest.NewDatabase(t)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+databaseURL, "MIGRATE_ON_START=false", "LOG_LEVEL=warn",
		"PORT="+strconv.Itoa(port), "ADMIN_PORT="+strconv.Itoa(adminPort), "NATS_STREAM=TALLY_RULES_"+strconv.Itoa(port),
		"NATS_SUBJECT_PREFIX=tally-rules-test-"+strconv.Itoa(port),
		// The primary standing in for a replica: the read database's metrics exist.
		"READ_DATABASE_URL="+databaseURL)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt) //nolint:errcheck // it may have exited
		cmd.Wait()                       //nolint:errcheck // the test is over
	})
	api, admin := fmt.Sprintf("http://127.0.0.1:%d", port), fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	require.Eventually(t, func() bool { return status(api+"/readyz") == http.StatusOK }, 30*time.Second, 100*time.Millisecond)
	for _, path := range []string{"/healthz", "/readyz", "/v1/events?wait=0", "/v1/user/1"} {
		status(api + path)
	}
	// The relay's collector reports the outbox once its first pass ran.
	var live map[string]*dto.MetricFamily
	require.Eventually(t, func() bool {
		live = scrape(t, admin+"/metrics")
		return live["tally_outbox_oldest_age_seconds"] != nil && live["tally_relay_leader"] != nil
	}, 30*time.Second, 200*time.Millisecond)

	info := live["tally_build_info"]
	require.NotNil(t, info)
	require.Len(t, info.Metric, 1)
	require.Equal(t, "version", info.Metric[0].Label[0].GetName())
	require.Equal(t, "v9.8.7-test", info.Metric[0].Label[0].GetValue(), "the version the build stamped")

	checkRuleSelectors(t, m, "tally", live)
}

func status(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close() //nolint:errcheck // only the status matters
	return resp.StatusCode
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close() //nolint:errcheck // read to the end below
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return families
}

// buildTally builds cmd/tally as the Makefile and the Dockerfile do, stamping version.
func buildTally(t *testing.T, version string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tally")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version="+version, "-o", bin, "../cmd/tally")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))
	return bin
}

// promtool parses every rule in full (`check rules`) and runs the rule unit tests in
// rules.test.yaml against the rendered prod rules (`test rules`): each burn-rate alert fires
// on a synthetic outage and stays silent on healthy traffic. `make test` builds promtool into
// bin/ and names it in PROMTOOL.
func TestRulesPromtool(t *testing.T) {
	t.Parallel()
	promtool := os.Getenv("PROMTOOL")
	if promtool == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("PROMTOOL is not set; make test sets it")
		}
		t.Skip("PROMTOOL is not set: run make test, which builds promtool into bin/")
	}
	promtool, err := filepath.Abs(promtool)
	require.NoError(t, err)
	m := render(t, "prod")
	require.Len(t, m.rules, 1)
	dir := t.TempDir()
	rules, err := json.Marshal(m.rules[0].Spec)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "rules.yaml"), rules, 0o600)) // JSON is YAML
	tests, err := os.ReadFile("rules.test.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "rules.test.yaml"), tests, 0o600))

	for _, args := range [][]string{{"check", "rules", "rules.yaml"}, {"test", "rules", "rules.test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// The release label kube-prometheus-stack selects by is one patch away in an overlay.
func TestReleaseLabelConfigurable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// kustomize takes resources by relative path only.
	prod, err := filepath.Abs("k8s/overlays/prod")
	require.NoError(t, err)
	base, err := filepath.Rel(dir, prod)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(strings.ReplaceAll(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - BASE
patches:
  - target:
      group: monitoring.coreos.com
    patch: |-
      - op: replace
        path: /metadata/labels/release
        value: prometheus
`, "BASE", base)), 0o600))
	for _, tc := range []struct {
		m       manifests
		release string
	}{
		{m: render(t, "prod"), release: prometheusRelease},
		{m: renderDir(t, dir), release: "prometheus"},
	} {
		var objects []metav1.ObjectMeta
		for _, sm := range tc.m.serviceMonitors {
			objects = append(objects, sm.ObjectMeta)
		}
		for _, p := range tc.m.probes {
			objects = append(objects, p.ObjectMeta)
		}
		for _, r := range tc.m.rules {
			objects = append(objects, r.ObjectMeta)
		}
		require.Len(t, objects, 3, "a ServiceMonitor, a Probe and a PrometheusRule")
		for _, o := range objects {
			require.Equal(t, tc.release, o.Labels["release"], o.Name)
		}
	}
}
