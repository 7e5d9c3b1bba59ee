package deploy

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	sigsyaml "sigs.k8s.io/yaml"
)

// crdSchema is one served version of a vendored CRD, ready to check objects as the API server
// does on create: the OpenAPI schema, then the CEL rules (x-kubernetes-validations).
type crdSchema struct {
	openAPI    validation.SchemaValidator
	structural *structuralschema.Structural
}

// loadCRDs reads every CRD in k8s/crds, keyed by "group/version/Kind".
func loadCRDs(t *testing.T) map[string]crdSchema {
	t.Helper()
	paths, err := filepath.Glob("k8s/crds/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, paths)
	schemas := map[string]crdSchema{}
	for _, path := range paths {
		raw, err := os.ReadFile(path)
		require.NoError(t, err)
		var crd apiextensionsv1.CustomResourceDefinition
		require.NoError(t, sigsyaml.UnmarshalStrict(raw, &crd), path)
		for _, v := range crd.Spec.Versions {
			if !v.Served {
				continue
			}
			var internal apiextensions.CustomResourceValidation
			require.NoError(t, apiextensionsv1.Convert_v1_CustomResourceValidation_To_apiextensions_CustomResourceValidation(v.Schema, &internal, nil))
			openAPI, _, err := validation.NewSchemaValidator(internal.OpenAPIV3Schema)
			require.NoError(t, err, path)
			structural, err := structuralschema.NewStructural(internal.OpenAPIV3Schema)
			require.NoError(t, err, path)
			schemas[crd.Spec.Group+"/"+v.Name+"/"+crd.Spec.Names.Kind] = crdSchema{openAPI: openAPI, structural: structural}
		}
	}
	return schemas
}

// validate returns what the API server would refuse in obj: schema violations, failed CEL
// rules, and fields the schema does not know (which the server would drop, or refuse under
// kubectl's default strict field validation).
func (s crdSchema) validate(obj *unstructured.Unstructured) field.ErrorList {
	errs := validation.ValidateCustomResource(nil, obj.UnstructuredContent(), s.openAPI)
	celErrs, _ := cel.NewValidator(s.structural, true, celconfig.PerCallLimit).
		Validate(context.Background(), nil, s.structural, obj.UnstructuredContent(), nil, celconfig.RuntimeCELCostBudget)
	errs = append(errs, celErrs...)
	pruned := obj.DeepCopy().UnstructuredContent()
	for _, path := range pruning.PruneWithOptions(pruned, s.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true}) {
		errs = append(errs, field.Invalid(field.NewPath(path), nil, "unknown field"))
	}
	return errs
}

// checkPostgres checks the prod overlay's CloudNativePG objects against the operator's own
// CRDs, and what tally relies on them for: three instances, synchronous replication, WAL
// archiving and a scheduled backup.
func checkPostgres(t *testing.T, m manifests) {
	t.Helper()
	schemas := loadCRDs(t)
	byKind := map[string][]*unstructured.Unstructured{}
	for _, obj := range m.custom {
		gvk := obj.GroupVersionKind()
		s, ok := schemas[gvk.Group+"/"+gvk.Version+"/"+gvk.Kind]
		require.True(t, ok, "%s %s: no vendored CRD serves it", gvk, obj.GetName())
		require.Empty(t, s.validate(obj), "%s %s", gvk.Kind, obj.GetName())
		byKind[gvk.Kind] = append(byKind[gvk.Kind], obj)
	}
	require.Len(t, byKind["Cluster"], 1)
	cluster := byKind["Cluster"][0].Object
	instances, _, _ := unstructured.NestedInt64(cluster, "spec", "instances")
	require.EqualValues(t, 3, instances)
	number, _, _ := unstructured.NestedInt64(cluster, "spec", "postgresql", "synchronous", "number")
	require.EqualValues(t, 1, number, "a commit waits for one standby")
	durability, _, _ := unstructured.NestedString(cluster, "spec", "postgresql", "synchronous", "dataDurability")
	require.Equal(t, "required", durability, "no silent fall back to asynchronous commits")
	plugins, _, _ := unstructured.NestedSlice(cluster, "spec", "plugins")
	require.Len(t, plugins, 1)
	archiver, _, _ := unstructured.NestedBool(plugins[0].(map[string]any), "isWALArchiver")
	require.True(t, archiver, "WAL is archived")
	store, _, _ := unstructured.NestedString(plugins[0].(map[string]any), "parameters", "barmanObjectName")

	require.Len(t, byKind["ObjectStore"], 1)
	require.Equal(t, byKind["ObjectStore"][0].GetName(), store, "the Cluster archives to the ObjectStore")
	require.Len(t, byKind["ScheduledBackup"], 1)
	backup := byKind["ScheduledBackup"][0].Object
	name, _, _ := unstructured.NestedString(backup, "spec", "cluster", "name")
	require.Equal(t, byKind["Cluster"][0].GetName(), name, "the scheduled backup backs up the Cluster")

	// READ_DATABASE_URL reaches the API pods only.
	api := deployment(t, m, "tally-api")
	require.Contains(t, envNames(api.Spec.Template.Spec.Containers[0].Env), "READ_DATABASE_URL")
	relay := deployment(t, m, "tally-relay")
	require.NotContains(t, envNames(relay.Spec.Template.Spec.Containers[0].Env), "READ_DATABASE_URL",
		"the relay reads the outbox from the primary")
}

func envNames(env []corev1.EnvVar) []string {
	names := make([]string, len(env))
	for i, e := range env {
		names[i] = e.Name
	}
	return names
}

// The vendored schema is no rubber stamp: each of these Clusters is refused, for the reason
// given, as the API server would refuse it.
func TestCNPGSchemaRefusesBrokenCluster(t *testing.T) {
	t.Parallel()
	schemas := loadCRDs(t)
	cluster := schemas["postgresql.cnpg.io/v1/Cluster"]
	require.NotNil(t, cluster.structural)
	prod := render(t, "prod")
	var good *unstructured.Unstructured
	for _, obj := range prod.custom {
		if obj.GetKind() == "Cluster" {
			good = obj
		}
	}
	require.NotNil(t, good)
	require.Empty(t, cluster.validate(good))
	for _, tc := range []struct {
		name    string
		breakIt func(obj map[string]any)
		want    string
	}{
		{name: "instances is not a number", want: "spec.instances",
			breakIt: func(obj map[string]any) { setField(t, obj, "three", "spec", "instances") }},
		{name: "no instances at all", want: "spec.instances",
			breakIt: func(obj map[string]any) { setField(t, obj, int64(0), "spec", "instances") }},
		{name: "unknown synchronous method", want: "spec.postgresql.synchronous.method",
			breakIt: func(obj map[string]any) { setField(t, obj, "all", "spec", "postgresql", "synchronous", "method") }},
		{name: "zero synchronous standbys (a CEL rule)", want: "synchronous replicas should be greater than zero",
			breakIt: func(obj map[string]any) { setField(t, obj, int64(0), "spec", "postgresql", "synchronous", "number") }},
		{name: "misspelt field", want: "spec.instance",
			breakIt: func(obj map[string]any) { setField(t, obj, int64(3), "spec", "instance") }},
		{name: "storage size without a quantity", want: "spec.storage",
			breakIt: func(obj map[string]any) { setField(t, obj, []any{"50Gi"}, "spec", "storage") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			broken := good.DeepCopy()
			tc.breakIt(broken.Object)
			errs := cluster.validate(broken)
			require.NotEmpty(t, errs)
			require.Contains(t, errs.ToAggregate().Error(), tc.want)
		})
	}
}

func setField(t *testing.T, obj map[string]any, value any, path ...string) {
	t.Helper()
	require.NoError(t, unstructured.SetNestedField(obj, value, path...))
}
