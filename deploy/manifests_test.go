package deploy

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// overlays are the environments, with what each must render to.
var overlays = []struct {
	name           string
	namespace      string
	hpaMin         int32
	hpaMax         int32
	alerts         bool // dev pages no one and drops the PrometheusRule and the Probe
	tokensRequired bool // the API does not start without TALLY_TOKENS
	// egress is what each workload may reach: wantEgress, or wantEgressManaged for a
	// database outside the cluster.
	egress map[string][]egressPeer
}{
	{name: "dev", namespace: "tally-dev", hpaMin: 1, hpaMax: 2, egress: wantEgress},
	{name: "prod", namespace: "tally", hpaMin: 3, hpaMax: 10, alerts: true, tokensRequired: true, egress: wantEgress},
	{name: "azure-citus", namespace: "tally", hpaMin: 3, hpaMax: 10, alerts: true, tokensRequired: true, egress: wantEgressManaged},
}

// The alerts docs/operations.md has a runbook for, by name and anchor.
var wantAlerts = map[string]string{
	"TallyAvailabilityBudgetBurn":     "error-budget-burn",
	"TallyAvailabilityBudgetBurnSlow": "error-budget-burn",
	"TallyProbeBudgetBurn":            "probe-failing",
	"TallyProbeBudgetBurnSlow":        "probe-failing",
	"TallyLatencyBudgetBurn":          "latency-budget-burn",
	"TallyLatencyBudgetBurnSlow":      "latency-budget-burn",
	"TallyAPINoReplicasAvailable":     "no-available-api-replicas",
	"TallyMetricsAbsent":              "metrics-absent",
	"TallyReadinessFlapping":          "readiness-flapping",
	"TallyPoolSaturated":              "pool-saturation",
	"TallyOutboxBacklogOld":           "outbox-backlog-age",
	"TallyRelayNoLeader":              "relay-without-leader",
	"TallyMigrationJobFailed":         "migration-job-failed",
}

const runbookPrefix = "https://github.com/tally-ledger/tally/blob/main/docs/operations.md#"

// The release label kube-prometheus-stack's Prometheus selects its ServiceMonitors, Probes and
// PrometheusRules by, as the base sets it.
const prometheusRelease = "kube-prometheus-stack"

// egressPeer is a destination a tally pod may open connections to, by the labels its pods
// carry or, for a service outside the cluster, by its one address, with the ports it may use
// there.
type egressPeer struct {
	namespace map[string]string // nil: the pod's own namespace; empty: any namespace
	pods      map[string]string
	address   bool // an ipBlock of a single address instead of pods
	ports     []string
}

var (
	dnsPeer = egressPeer{namespace: map[string]string{"kubernetes.io/metadata.name": "kube-system"},
		pods: map[string]string{"k8s-app": "kube-dns"}, ports: []string{"UDP/53", "TCP/53"}}
	postgresPeer = egressPeer{pods: map[string]string{"cnpg.io/podRole": "instance"}, ports: []string{"TCP/5432"}}
	poolerPeer   = egressPeer{pods: map[string]string{"cnpg.io/podRole": "pooler"}, ports: []string{"TCP/5432", "TCP/6432"}}
	natsPeer     = egressPeer{namespace: map[string]string{}, pods: map[string]string{"app.kubernetes.io/name": "nats"}, ports: []string{"TCP/4222"}}
)

// The destinations each workload needs, and no others: the API PostgreSQL directly or through
// PgBouncer; the relay and the migration Job PostgreSQL itself, for their session advisory
// locks; only the relay NATS.
var wantEgress = map[string][]egressPeer{
	"api":     {postgresPeer, poolerPeer, dnsPeer},
	"relay":   {postgresPeer, natsPeer, dnsPeer},
	"migrate": {postgresPeer, dnsPeer},
}

// A managed Citus cluster (overlays/azure-citus) outside Kubernetes, at its coordinator's
// private address: the API directly or through the service's PgBouncer, the relay and the
// migration Job directly.
var wantEgressManaged = map[string][]egressPeer{
	"api":     {{address: true, ports: []string{"TCP/5432", "TCP/6432"}}, dnsPeer},
	"relay":   {{address: true, ports: []string{"TCP/5432"}}, natsPeer, dnsPeer},
	"migrate": {{address: true, ports: []string{"TCP/5432"}}, dnsPeer},
}

// The metrics the dashboard must chart (the contract the binary implements).
var dashboardMetrics = []string{
	"http_requests_total", "http_request_duration_seconds_bucket", "tally_transactions_total",
	"tally_idempotent_replays_total", "tally_backdated_total", "tally_backdated_rows_moved_total",
	"pgxpool_acquired_conns", "pgxpool_max_conns", "tally_outbox_backlog",
	"tally_outbox_oldest_age_seconds", "tally_relay_leader",
}

// serviceMonitor and prometheusRule mirror only the fields of the prometheus-operator CRDs
// that these manifests use: the operator's Go module would pull in controller-runtime. Strict
// decoding still catches a misspelt field, and a field not mirrored here must be added first.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type probe struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobName  string `json:"jobName"`
		Interval string `json:"interval"`
		Module   string `json:"module"`
		Prober   struct {
			URL string `json:"url"`
		} `json:"prober"`
		Targets struct {
			StaticConfig struct {
				Static []string `json:"static"`
			} `json:"staticConfig"`
		} `json:"targets"`
	} `json:"spec"`
}

type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []struct {
			Name string `json:"name"`
			// omitempty: promtool reads these groups back as a Prometheus rule file.
			Rules []struct {
				Record      string            `json:"record,omitempty"`
				Alert       string            `json:"alert,omitempty"`
				Expr        string            `json:"expr"`
				For         string            `json:"for,omitempty"`
				Labels      map[string]string `json:"labels,omitempty"`
				Annotations map[string]string `json:"annotations,omitempty"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// manifests is one rendered overlay, decoded by kind.
type manifests struct {
	all             []metav1.Object
	namespaces      []*corev1.Namespace
	configMaps      []*corev1.ConfigMap
	secrets         []*corev1.Secret
	services        []*corev1.Service
	deployments     []*appsv1.Deployment
	jobs            []*batchv1.Job
	pdbs            []*policyv1.PodDisruptionBudget
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	networkPolicies []*networkingv1.NetworkPolicy
	serviceMonitors []*serviceMonitor
	probes          []*probe
	rules           []*prometheusRule
	custom          []*unstructured.Unstructured // CloudNativePG's, checked against its CRDs (cnpg_test.go)
}

// render builds an overlay in process with the kustomize library that `kustomize build` (and
// `kubectl kustomize`) is made of, and decodes every object strictly into its Kubernetes type.
// kustomizeMu serializes kustomize runs: the library keeps shared state that two runs at once
// race on (seen under -race), so parallel tests render one at a time.
var kustomizeMu sync.Mutex

func render(t *testing.T, overlay string) manifests {
	t.Helper()
	return renderDir(t, "k8s/overlays/"+overlay)
}

// renderDir renders the kustomization in dir.
func renderDir(t *testing.T, dir string) manifests {
	t.Helper()
	kustomizeMu.Lock()
	defer kustomizeMu.Unlock()
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).
		Run(filesys.MakeFsOnDisk(), dir)
	require.NoError(t, err)
	var m manifests
	for _, r := range resources.Resources() {
		data, err := r.MarshalJSON()
		require.NoError(t, err)
		id := r.GetApiVersion() + " " + r.GetKind() + " " + r.GetName()
		var obj metav1.Object
		switch r.GetApiVersion() + "/" + r.GetKind() {
		case "v1/Namespace":
			obj = decode(t, id, data, &m.namespaces)
		case "v1/ConfigMap":
			obj = decode(t, id, data, &m.configMaps)
		case "v1/Secret":
			obj = decode(t, id, data, &m.secrets)
		case "v1/Service":
			obj = decode(t, id, data, &m.services)
		case "apps/v1/Deployment":
			obj = decode(t, id, data, &m.deployments)
		case "batch/v1/Job":
			obj = decode(t, id, data, &m.jobs)
		case "policy/v1/PodDisruptionBudget":
			obj = decode(t, id, data, &m.pdbs)
		case "autoscaling/v2/HorizontalPodAutoscaler":
			obj = decode(t, id, data, &m.hpas)
		case "networking.k8s.io/v1/NetworkPolicy":
			obj = decode(t, id, data, &m.networkPolicies)
		case "monitoring.coreos.com/v1/ServiceMonitor":
			obj = decode(t, id, data, &m.serviceMonitors)
		case "monitoring.coreos.com/v1/Probe":
			obj = decode(t, id, data, &m.probes)
		case "monitoring.coreos.com/v1/PrometheusRule":
			obj = decode(t, id, data, &m.rules)
		case "postgresql.cnpg.io/v1/Cluster", "postgresql.cnpg.io/v1/ScheduledBackup", "barmancloud.cnpg.io/v1/ObjectStore":
			u := &unstructured.Unstructured{}
			require.NoError(t, u.UnmarshalJSON(data), id)
			m.custom = append(m.custom, u)
			obj = u
		default:
			t.Fatalf("%s: no check knows this kind; add it to render", id)
		}
		m.all = append(m.all, obj)
	}
	return m
}

// decode unmarshals data into a new T, failing on unknown or duplicate fields (matched
// case-sensitively, as the API server does), and appends it to list.
func decode[T any, P interface {
	*T
	metav1.Object
}](t *testing.T, id string, data []byte, list *[]P) P {
	t.Helper()
	obj := P(new(T))
	strict, err := sigsjson.UnmarshalStrict(data, obj)
	require.NoError(t, err, id)
	require.Empty(t, strict, "%s: fields Kubernetes would reject", id)
	*list = append(*list, obj)
	return obj
}

func TestOverlays(t *testing.T) {
	t.Parallel()
	anchors := headingAnchors(t, "../docs/operations.md")
	for _, o := range overlays {
		t.Run(o.name, func(t *testing.T) {
			t.Parallel()
			m := render(t, o.name)

			for _, obj := range m.all {
				if _, isNamespace := obj.(*corev1.Namespace); !isNamespace {
					require.Equal(t, o.namespace, obj.GetNamespace(), obj.GetName())
				}
			}
			require.Len(t, m.deployments, 2, "the API and the relay")
			require.Len(t, m.jobs, 1, "the migration Job")

			checkPods(t, m)
			checkAPI(t, m, o.hpaMin, o.hpaMax, o.tokensRequired)
			checkMigrateJob(t, m)
			checkDisruptionBudgets(t, m)
			checkNetworkPolicies(t, m, o.egress)
			checkServices(t, m)
			checkDashboard(t, m)
			if o.name == "prod" {
				checkPostgres(t, m)
			} else {
				require.Empty(t, m.custom, "%s brings its own PostgreSQL", o.name)
			}
			if o.alerts {
				checkAlerts(t, m, anchors)
				checkProbe(t, m, o.namespace)
				checkRuleSelectors(t, m, o.namespace, nil)
			} else {
				require.Empty(t, m.rules)
				require.Empty(t, m.probes)
			}
		})
	}
}

// podTemplates returns every pod template by its owner's name.
func podTemplates(m manifests) map[string]corev1.PodTemplateSpec {
	out := map[string]corev1.PodTemplateSpec{}
	for _, d := range m.deployments {
		out["Deployment "+d.Name] = d.Spec.Template
	}
	for _, j := range m.jobs {
		out["Job "+j.Name] = j.Spec.Template
	}
	return out
}

// checkPods holds every container to the same hardening and resource rules, and every
// long-running one to having all three probes.
func checkPods(t *testing.T, m manifests) {
	for owner, tmpl := range podTemplates(m) {
		pod := tmpl.Spec
		psc := pod.SecurityContext
		if psc == nil {
			psc = &corev1.PodSecurityContext{}
		}
		require.NotNil(t, pod.AutomountServiceAccountToken, owner)
		require.False(t, *pod.AutomountServiceAccountToken, "%s: tally never calls the Kubernetes API", owner)
		require.Empty(t, pod.InitContainers, owner)
		for _, c := range pod.Containers {
			where := owner + " container " + c.Name
			sc := c.SecurityContext
			require.NotNil(t, sc, where)

			require.True(t, isTrue(cmpPtr(sc.RunAsNonRoot, psc.RunAsNonRoot)), "%s: runAsNonRoot", where)
			uid := cmpPtr(sc.RunAsUser, psc.RunAsUser)
			require.NotNil(t, uid, where)
			require.EqualValues(t, 65532, *uid, "%s: distroless's nonroot user", where)
			require.True(t, isTrue(sc.ReadOnlyRootFilesystem), "%s: readOnlyRootFilesystem", where)
			require.NotNil(t, sc.AllowPrivilegeEscalation, where)
			require.False(t, *sc.AllowPrivilegeEscalation, "%s: allowPrivilegeEscalation", where)
			require.NotNil(t, sc.Capabilities, where)
			require.Contains(t, sc.Capabilities.Drop, corev1.Capability("ALL"), where)
			require.Empty(t, sc.Capabilities.Add, where)
			require.False(t, isTrue(sc.Privileged), where)
			seccomp := sc.SeccompProfile
			if seccomp == nil {
				seccomp = psc.SeccompProfile
			}
			require.NotNil(t, seccomp, where)
			require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, seccomp.Type, where)

			for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, ok := c.Resources.Requests[res]
				require.True(t, ok, "%s: %s request", where, res)
				limit, ok := c.Resources.Limits[res]
				require.True(t, ok, "%s: %s limit", where, res)
				require.LessOrEqual(t, req.Cmp(limit), 0, "%s: %s request above its limit", where, res)
			}

			require.Empty(t, imageProblem(c.Image), where)
			require.Contains(t, c.Image, "@sha256:", "%s: pinned by digest", where)

			if strings.HasPrefix(owner, "Job ") {
				continue // runs to completion; nothing to probe
			}
			gomemlimit := envVar(c, "GOMEMLIMIT")
			require.NotNil(t, gomemlimit, "%s: GOMEMLIMIT", where)
			require.NotNil(t, gomemlimit.ValueFrom, where)
			require.NotNil(t, gomemlimit.ValueFrom.ResourceFieldRef, "%s: GOMEMLIMIT from the container's limit", where)
			require.Equal(t, "limits.memory", gomemlimit.ValueFrom.ResourceFieldRef.Resource, where)
			require.Contains(t, []string{"", c.Name}, gomemlimit.ValueFrom.ResourceFieldRef.ContainerName, where)
			for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
				require.NotNil(t, p, "%s: %s probe", where, name)
				require.NotNil(t, p.HTTPGet, "%s: %s probe over HTTP", where, name)
				// One port for every probe of every workload: the admin port.
				require.Equal(t, 9090, containerPort(t, c, p.HTTPGet.Port), "%s: %s probe on the admin port", where, name)
			}
			require.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path, "%s: liveness must not depend on the database", where)
			require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path, where)

			// The grace period covers the preStop sleep, the readiness delay and the drain. Only
			// serve reads SHUTDOWN_*: anywhere else they would promise what nothing does.
			var budget time.Duration
			if slices.Equal(c.Args, []string{"serve"}) {
				budget = env(t, c, "SHUTDOWN_DELAY", 0) + env(t, c, "SHUTDOWN_TIMEOUT", 20*time.Second)
			} else {
				require.Nil(t, envVar(c, "SHUTDOWN_DELAY"), "%s: only serve reads SHUTDOWN_DELAY", where)
				require.Nil(t, envVar(c, "SHUTDOWN_TIMEOUT"), "%s: only serve reads SHUTDOWN_TIMEOUT", where)
			}
			if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
				require.NotNil(t, c.Lifecycle.PreStop.Sleep, "%s: the image has no shell, so preStop can only sleep", where)
				budget += time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
			}
			require.NotNil(t, pod.TerminationGracePeriodSeconds, where)
			grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
			require.Greater(t, grace, budget, "%s: terminationGracePeriodSeconds", where)
		}
	}
}

var imageRef = regexp.MustCompile(`^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$`)

// imageProblem says what is wrong with an image reference, if anything: it must name its
// registry and be pinned by a tag other than latest or by a digest.
func imageProblem(image string) string {
	m := imageRef.FindStringSubmatch(image)
	switch {
	case m == nil:
		return fmt.Sprintf("image %q is not a fully qualified reference", image)
	case m[2] == "" && m[3] == "":
		return fmt.Sprintf("image %q has neither tag nor digest", image)
	case m[2] == ":latest":
		return fmt.Sprintf("image %q uses the latest tag", image)
	}
	return ""
}

// checkAPI checks the API's rollout, scaling and shutdown settings.
func checkAPI(t *testing.T, m manifests, hpaMin, hpaMax int32, tokensRequired bool) {
	api := deployment(t, m, "tally-api")
	c := api.Spec.Template.Spec.Containers[0]
	require.Equal(t, []string{"serve"}, c.Args)

	tokens := envVar(c, "TALLY_TOKENS")
	require.NotNil(t, tokens, "TALLY_TOKENS")
	require.NotNil(t, tokens.ValueFrom, "TALLY_TOKENS from the Secret")
	require.NotNil(t, tokens.ValueFrom.SecretKeyRef, "TALLY_TOKENS from the Secret")
	require.Equal(t, !tokensRequired, isTrue(tokens.ValueFrom.SecretKeyRef.Optional), "TALLY_TOKENS optional")
	if tokensRequired {
		require.NotNil(t, envVar(c, "TALLY_REQUIRE_TOKENS"), "an empty TALLY_TOKENS refused")
		require.Equal(t, "true", envVar(c, "TALLY_REQUIRE_TOKENS").Value)
	}

	require.Equal(t, appsv1.RollingUpdateDeploymentStrategyType, api.Spec.Strategy.Type)
	ru := api.Spec.Strategy.RollingUpdate
	require.NotNil(t, ru)
	require.NotNil(t, ru.MaxUnavailable)
	unavailable, err := intstr.GetScaledValueFromIntOrPercent(ru.MaxUnavailable, 100, false)
	require.NoError(t, err)
	require.Zero(t, unavailable, "a rollout must never drop below the wanted ready replicas")

	require.Equal(t, "false", envValue(c, "MIGRATE_ON_START"), "the migration Job migrates")
	require.NotNil(t, c.Lifecycle)
	require.NotNil(t, c.Lifecycle.PreStop)
	require.NotNil(t, c.Lifecycle.PreStop.Sleep)
	require.Positive(t, c.Lifecycle.PreStop.Sleep.Seconds)
	require.Positive(t, env(t, c, "SHUTDOWN_DELAY", 0))

	keys := map[string]bool{}
	for _, tsc := range api.Spec.Template.Spec.TopologySpreadConstraints {
		keys[tsc.TopologyKey] = true
	}
	require.True(t, keys["kubernetes.io/hostname"] && keys["topology.kubernetes.io/zone"], "spread over nodes and zones")

	require.Len(t, m.hpas, 1)
	hpa := m.hpas[0]
	require.Equal(t, "Deployment", hpa.Spec.ScaleTargetRef.Kind)
	require.Equal(t, api.Name, hpa.Spec.ScaleTargetRef.Name)
	require.NotNil(t, hpa.Spec.MinReplicas)
	require.Equal(t, hpaMin, *hpa.Spec.MinReplicas)
	require.Equal(t, hpaMax, hpa.Spec.MaxReplicas)
	// An apply would reset a scaled-out Deployment to its replicas field: the HPA alone sets them.
	for _, h := range m.hpas {
		require.Equal(t, "Deployment", h.Spec.ScaleTargetRef.Kind)
		require.Nil(t, deployment(t, m, h.Spec.ScaleTargetRef.Name).Spec.Replicas,
			"Deployment %s: replicas beside HorizontalPodAutoscaler %s", h.Spec.ScaleTargetRef.Name, h.Name)
	}
	require.Len(t, hpa.Spec.Metrics, 1)
	require.Equal(t, corev1.ResourceCPU, hpa.Spec.Metrics[0].Resource.Name)
	require.EqualValues(t, 70, *hpa.Spec.Metrics[0].Resource.Target.AverageUtilization)
}

// checkMigrateJob checks that the Job is named after the release it migrates to, so that each
// release applies a new Job, and that configuration reaches it without a hashed name.
func checkMigrateJob(t *testing.T, m manifests) {
	job := m.jobs[0]
	c := job.Spec.Template.Spec.Containers[0]
	require.Equal(t, []string{"migrate"}, c.Args)
	require.Equal(t, corev1.RestartPolicyNever, job.Spec.Template.Spec.RestartPolicy, "a failed attempt's pod keeps its logs")
	url := envVar(c, "DATABASE_URL")
	require.NotNil(t, url)
	require.NotNil(t, url.ValueFrom)
	require.NotNil(t, url.ValueFrom.SecretKeyRef)
	require.Equal(t, "MIGRATE_DATABASE_URL", url.ValueFrom.SecretKeyRef.Key, "the migration role, which owns the schema")
	require.NotNil(t, job.Spec.BackoffLimit)
	require.NotNil(t, job.Spec.TTLSecondsAfterFinished)
	require.Empty(t, c.EnvFrom, "a hashed ConfigMap name would change the Job's immutable template")
	apiImage := deployment(t, m, "tally-api").Spec.Template.Spec.Containers[0].Image
	require.Equal(t, apiImage, c.Image)
	ref, _, _ := strings.Cut(apiImage, "@")
	tag := ref[strings.LastIndex(ref, ":")+1:]
	require.Equal(t, "tally-migrate-"+tag, job.Name)
}

// checkDisruptionBudgets requires exactly one PDB for each Deployment's pods.
func checkDisruptionBudgets(t *testing.T, m manifests) {
	for _, d := range m.deployments {
		var covering []string
		for _, pdb := range m.pdbs {
			if selects(t, pdb.Spec.Selector, d.Spec.Template.Labels) {
				covering = append(covering, pdb.Name)
			}
		}
		require.Len(t, covering, 1, "Deployment %s: PodDisruptionBudgets %v", d.Name, covering)
	}
	for _, pdb := range m.pdbs {
		require.NotNil(t, pdb.Spec.UnhealthyPodEvictionPolicy, pdb.Name)
		require.Equal(t, policyv1.AlwaysAllow, *pdb.Spec.UnhealthyPodEvictionPolicy,
			"%s: a drain must not wait on a pod that serves nothing", pdb.Name)
	}
}

// Who may call the API on :8000: the ingress controller's namespace, labelled clients in any
// namespace, and the blackbox exporter that probes it.
var apiCallers = []networkingv1.NetworkPolicyPeer{
	{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "ingress-nginx"}}},
	{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tally/client": "true"}}},
	{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "monitoring"}},
		PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "prometheus-blackbox-exporter"}}},
}

// checkNetworkPolicies requires every pod to be fenced in both ways: egress only to the
// destinations its workload needs (wantEgress), named by their labels or a single address
// rather than open to a range; the API's port open only to apiCallers, the metrics port only
// to the monitoring namespace.
func checkNetworkPolicies(t *testing.T, m manifests, wantEgress map[string][]egressPeer) {
	for _, np := range m.networkPolicies {
		require.Contains(t, np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress, np.Name)
		require.Contains(t, np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress, np.Name)
		component := np.Spec.PodSelector.MatchLabels["app.kubernetes.io/component"]
		want, ok := wantEgress[component]
		require.True(t, ok, "%s: selects no known workload", np.Name)
		reached := map[int]map[string]bool{} // wantEgress index → ports allowed
		for _, rule := range np.Spec.Egress {
			require.NotEmpty(t, rule.To, "%s: an egress rule without destinations allows every address", np.Name)
			require.NotEmpty(t, rule.Ports, "%s: an egress rule without ports allows every port", np.Name)
			for _, peer := range rule.To {
				i := slices.IndexFunc(want, func(w egressPeer) bool { return peerIs(peer, w) })
				require.NotEqual(t, -1, i, "%s: egress to %s, which %s does not need", np.Name, peerString(peer), component)
				for _, p := range rule.Ports {
					require.NotNil(t, p.Port, np.Name)
					require.Nil(t, p.EndPort, np.Name)
					key := fmt.Sprintf("%s/%s", protocol(p.Protocol), p.Port.String())
					require.Contains(t, want[i].ports, key, "%s: egress to %s on %s", np.Name, peerString(peer), key)
					if reached[i] == nil {
						reached[i] = map[string]bool{}
					}
					reached[i][key] = true
				}
			}
		}
		for i, w := range want {
			for _, port := range w.ports {
				require.True(t, reached[i][port], "%s: no egress to %v on %s", np.Name, w.pods, port)
			}
		}
		for _, rule := range np.Spec.Ingress {
			require.NotEmpty(t, rule.Ports, "%s: an ingress rule without ports allows every port", np.Name)
			require.NotEmpty(t, rule.From, "%s: an ingress rule without sources allows every caller", np.Name)
			for _, p := range rule.Ports {
				require.NotNil(t, p.Port, np.Name)
				switch p.Port.String() {
				case "8000":
					require.Equal(t, "api", component, "%s: only the API serves :8000", np.Name)
					require.ElementsMatch(t, apiCallers, rule.From, "%s: callers of the API", np.Name)
				case "9090":
					require.Len(t, rule.From, 1, np.Name)
					require.Equal(t, map[string]string{"kubernetes.io/metadata.name": "monitoring"},
						rule.From[0].NamespaceSelector.MatchLabels, "%s: metrics from the monitoring namespace only", np.Name)
					require.Nil(t, rule.From[0].PodSelector, np.Name)
				default:
					t.Fatalf("%s: ingress to port %s", np.Name, p.Port.String())
				}
			}
		}
	}
	for owner, tmpl := range podTemplates(m) {
		var covering []string
		for _, np := range m.networkPolicies {
			if selects(t, &np.Spec.PodSelector, tmpl.Labels) {
				covering = append(covering, np.Name)
			}
		}
		require.Len(t, covering, 1, "%s: NetworkPolicies %v", owner, covering)
	}
}

// peerIs says whether a NetworkPolicy peer selects exactly the pods w names, or for an address
// peer, one address and nothing else.
func peerIs(peer networkingv1.NetworkPolicyPeer, w egressPeer) bool {
	if w.address {
		if peer.IPBlock == nil || len(peer.IPBlock.Except) > 0 || peer.PodSelector != nil || peer.NamespaceSelector != nil {
			return false
		}
		prefix, err := netip.ParsePrefix(peer.IPBlock.CIDR)
		return err == nil && prefix.IsSingleIP()
	}
	if peer.IPBlock != nil || peer.PodSelector == nil || len(peer.PodSelector.MatchExpressions) > 0 || !maps.Equal(peer.PodSelector.MatchLabels, w.pods) {
		return false
	}
	switch {
	case w.namespace == nil:
		return peer.NamespaceSelector == nil
	case peer.NamespaceSelector == nil || len(peer.NamespaceSelector.MatchExpressions) > 0:
		return false
	}
	return maps.Equal(peer.NamespaceSelector.MatchLabels, w.namespace)
}

func peerString(peer networkingv1.NetworkPolicyPeer) string {
	data, err := json.Marshal(peer)
	if err != nil {
		return err.Error()
	}
	return string(data)
}

// checkServices requires every Service to select a workload and name ports that its pods
// declare, and every ServiceMonitor endpoint to name a port of a Service it selects.
func checkServices(t *testing.T, m manifests) {
	for _, svc := range m.services {
		var pods []corev1.PodTemplateSpec
		for _, d := range m.deployments {
			if labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
				pods = append(pods, d.Spec.Template)
			}
		}
		require.Len(t, pods, 1, "Service %s selects one Deployment", svc.Name)
		for _, sp := range svc.Spec.Ports {
			require.NotEmpty(t, sp.Name, svc.Name)
			containerPort(t, pods[0].Spec.Containers[0], sp.TargetPort)
		}
	}
	require.Len(t, m.serviceMonitors, 1)
	scraped := map[string]bool{}
	for _, sm := range m.serviceMonitors {
		require.NotEmpty(t, sm.Spec.Endpoints, sm.Name)
		for _, svc := range m.services {
			if !selects(t, &sm.Spec.Selector, svc.Labels) {
				continue
			}
			for _, ep := range sm.Spec.Endpoints {
				require.True(t, slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool {
					return p.Name == ep.Port && p.Port == 9090
				}), "ServiceMonitor %s: Service %s has no port %q on 9090", sm.Name, svc.Name, ep.Port)
			}
			scraped[svc.Name] = true
		}
	}
	require.True(t, scraped["tally-api"] && scraped["tally-relay"], "scraped: %v", scraped)
}

// checkDashboard requires one Grafana dashboard ConfigMap that charts every tally metric.
func checkDashboard(t *testing.T, m manifests) {
	var found int
	for _, cm := range m.configMaps {
		if cm.Labels["grafana_dashboard"] != "1" {
			continue
		}
		found++
		require.Len(t, cm.Data, 1, cm.Name)
		for name, text := range cm.Data {
			var dash struct {
				Title  string `json:"title"`
				Panels []struct {
					Title   string `json:"title"`
					Targets []struct {
						Expr string `json:"expr"`
					} `json:"targets"`
				} `json:"panels"`
			}
			require.NoError(t, json.Unmarshal([]byte(text), &dash), name)
			require.NotEmpty(t, dash.Title, name)
			var exprs strings.Builder
			for _, p := range dash.Panels {
				require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
				for _, target := range p.Targets {
					exprs.WriteString(target.Expr + "\n")
				}
			}
			for _, metric := range dashboardMetrics {
				require.Contains(t, exprs.String(), metric, "%s charts no %s", name, metric)
			}
		}
	}
	require.Equal(t, 1, found, "Grafana dashboard ConfigMaps")
}

// checkAlerts requires the agreed alerts, each with a runbook in docs/operations.md.
func checkAlerts(t *testing.T, m manifests, anchors map[string]bool) {
	seen := map[string]bool{}
	for _, pr := range m.rules {
		for _, g := range pr.Spec.Groups {
			for _, r := range g.Rules {
				if r.Alert == "" {
					continue
				}
				require.False(t, seen[r.Alert], "alert %s defined twice", r.Alert)
				seen[r.Alert] = true
				require.NotEmpty(t, strings.TrimSpace(r.Expr), r.Alert)
				require.Contains(t, []string{"critical", "warning"}, r.Labels["severity"], r.Alert)
				require.NotEmpty(t, r.Annotations["summary"], r.Alert)
				if r.For != "" {
					_, err := time.ParseDuration(r.For)
					require.NoError(t, err, r.Alert)
				}
				url := r.Annotations["runbook_url"]
				require.True(t, strings.HasPrefix(url, runbookPrefix), "%s: runbook_url %q", r.Alert, url)
				anchor := strings.TrimPrefix(url, runbookPrefix)
				require.True(t, anchors[anchor], "%s: docs/operations.md has no heading with anchor #%s", r.Alert, anchor)
				if want, ok := wantAlerts[r.Alert]; ok {
					require.Equal(t, want, anchor, r.Alert)
				}
			}
		}
	}
	for name := range wantAlerts {
		require.True(t, seen[name], "alert %s is missing", name)
	}
	for _, pr := range m.rules {
		require.Equal(t, prometheusRelease, pr.Labels["release"], "PrometheusRule %s", pr.Name)
	}
	for _, sm := range m.serviceMonitors {
		require.Equal(t, prometheusRelease, sm.Labels["release"], "ServiceMonitor %s", sm.Name)
	}
	checkBurnRates(t, m)
}

// headingAnchors returns the anchors GitHub gives the Markdown headings of a file: lower
// case, punctuation dropped, spaces to hyphens, and -1, -2... on repeats.
func headingAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	text, err := os.ReadFile(path)
	require.NoError(t, err)
	anchors := map[string]bool{}
	counts := map[string]int{}
	inFence := false
	for line := range strings.SplitSeq(string(text), "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		title, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " ")
		if inFence || !strings.HasPrefix(line, "#") || !ok {
			continue
		}
		anchor := strings.Map(func(r rune) rune {
			switch {
			case r == ' ':
				return '-'
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r):
				return unicode.ToLower(r)
			}
			return -1
		}, strings.TrimSpace(title))
		if n := counts[anchor]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", anchor, n)] = true
		} else {
			anchors[anchor] = true
		}
		counts[anchor]++
	}
	return anchors
}

func TestHeadingAnchors(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/x.md"
	require.NoError(t, os.WriteFile(path, []byte("# Operating tally\n## High 5xx ratio\n```\n# not a heading\n```\n### Pool saturation!\n## Pool saturation\n#hashtag\n"), 0o600))
	require.Equal(t, map[string]bool{
		"operating-tally": true, "high-5xx-ratio": true, "pool-saturation": true, "pool-saturation-1": true,
	}, headingAnchors(t, path))
}

func TestImageProblem(t *testing.T) {
	t.Parallel()
	for image, pinned := range map[string]bool{
		"ghcr.io/tally-ledger/tally:0.1.0":                             true,
		"registry.example:5000/tally:v1":                               true,
		"ghcr.io/tally-ledger/tally@sha256:" + strings.Repeat("a", 64): true,
		"ghcr.io/tally-ledger/tally":                                   false,
		"ghcr.io/tally-ledger/tally:latest":                            false,
		"registry.example:5000/tally":                                  false,
		"tally:0.1.0":                                                  false,
	} {
		require.Equal(t, pinned, imageProblem(image) == "", image)
	}
}

func deployment(t *testing.T, m manifests, name string) *appsv1.Deployment {
	t.Helper()
	for _, d := range m.deployments {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("no Deployment %s", name)
	return nil
}

func selects(t *testing.T, selector *metav1.LabelSelector, podLabels map[string]string) bool {
	t.Helper()
	require.NotNil(t, selector)
	s, err := metav1.LabelSelectorAsSelector(selector)
	require.NoError(t, err)
	require.False(t, s.Empty(), "a selector must not match everything")
	return s.Matches(labels.Set(podLabels))
}

// containerPort resolves a probe's or Service's port, by number or name, to a declared port.
func containerPort(t *testing.T, c corev1.Container, port intstr.IntOrString) int {
	t.Helper()
	for _, p := range c.Ports {
		if port.Type == intstr.String && p.Name == port.StrVal || port.Type == intstr.Int && p.ContainerPort == port.IntVal {
			return int(p.ContainerPort)
		}
	}
	t.Fatalf("container %s declares no port %s", c.Name, port.String())
	return 0
}

func envValue(c corev1.Container, name string) string {
	if e := envVar(c, name); e != nil {
		return e.Value
	}
	return ""
}

func envVar(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

// env reads a duration setting from the container's env, or def when unset.
func env(t *testing.T, c corev1.Container, name string, def time.Duration) time.Duration {
	t.Helper()
	v := envValue(c, name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	require.NoError(t, err, name)
	return d
}

func protocol(p *corev1.Protocol) corev1.Protocol {
	if p == nil {
		return corev1.ProtocolTCP
	}
	return *p
}

func isTrue(b *bool) bool { return b != nil && *b }

func cmpPtr[T any](first, second *T) *T {
	if first != nil {
		return first
	}
	return second
}

// docs/operations.md's connection budget: PostgreSQL's max_connections for prod, and the share
// kept free for superusers, monitoring, backups and operators.
const (
	maxConnections    = 200
	connectionReserve = 0.2
)

// At the HPA's maximum, with a rollout's surge pod for each Deployment, the relays' lease
// connections and the migration Job, prod's pools fit max_connections with the reserve free.
func TestConnectionBudget(t *testing.T) {
	t.Parallel()
	prod, dev := render(t, "prod"), render(t, "dev")
	require.Len(t, dev.secrets, 1, "the example Secret")
	u, err := url.Parse(dev.secrets[0].StringData["DATABASE_URL"])
	require.NoError(t, err)
	poolMax, err := strconv.Atoi(u.Query().Get("pool_max_conns"))
	require.NoError(t, err, "the example sets pool_max_conns")
	surge := func(d *appsv1.Deployment) int {
		n, err := intstr.GetScaledValueFromIntOrPercent(d.Spec.Strategy.RollingUpdate.MaxSurge, 1, true)
		require.NoError(t, err)
		return n
	}
	require.Len(t, prod.hpas, 1)
	api, relay := deployment(t, prod, "tally-api"), deployment(t, prod, "tally-relay")
	apiPods := int(prod.hpas[0].Spec.MaxReplicas) + surge(api)
	relayPods := int(*relay.Spec.Replicas) + surge(relay)
	total := apiPods*poolMax + relayPods*(poolMax+1) + 1
	require.LessOrEqual(t, float64(total), maxConnections*(1-connectionReserve),
		"%d API pods and %d relays × pool_max_conns %d, leases and the Job: %d connections", apiPods, relayPods, poolMax, total)
	t.Logf("at most %d of max_connections %d", total, maxConnections)
}
