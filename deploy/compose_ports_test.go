package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
)

// composeProject is docker-compose.yml as the Compose Specification's loader reads it, with
// every profile enabled.
func composeProject(t *testing.T) *types.Project {
	t.Helper()
	content, err := os.ReadFile("../docker-compose.yml")
	require.NoError(t, err)
	project, err := loadCompose(content, "*")
	require.NoError(t, err)
	return project
}

// serviceRunning returns the service whose command starts with the given tally subcommand or
// program, outside the citus profile: that profile runs the same programs against a Citus
// cluster, and compose_citus_test.go checks it.
func serviceRunning(t *testing.T, p *types.Project, program string) (string, types.ServiceConfig) {
	t.Helper()
	for name, s := range p.Services {
		if slices.Contains(s.Profiles, "citus") {
			continue
		}
		if len(s.Command) > 0 && s.Command[0] == program {
			return name, s
		}
	}
	t.Fatalf("no service in docker-compose.yml runs %q", program)
	return "", types.ServiceConfig{}
}

// environment returns a service's variable, or "" when it is not set.
func environment(s types.ServiceConfig, name string) string {
	if v := s.Environment[name]; v != nil {
		return *v
	}
	return ""
}

// The assignment's README sends people to http://localhost:5000/api/docs; tally's own docs
// and the acceptance suite use :8000. Both must reach the API.
func TestComposePublishesTheAPIOn8000And5000(t *testing.T) {
	t.Parallel()
	_, api := serviceRunning(t, composeProject(t), "serve")
	port := environment(api, "PORT")
	require.NotEmpty(t, port, "the API's PORT is set explicitly")
	published := map[string]string{}
	for _, p := range api.Ports {
		published[p.Published] = fmt.Sprint(p.Target)
	}
	for _, host := range []string{"8000", "5000"} {
		t.Run(host, func(t *testing.T) {
			require.Equal(t, port, published[host], "host port %s must reach the API's port %s", host, port)
		})
	}
}

// sql_data/demo.sql loads only on request, after the migration, into the API's database.
func TestComposeLoadsSQLDataOnRequest(t *testing.T) {
	t.Parallel()
	project := composeProject(t)
	name, loader := serviceRunning(t, project, "psql")
	_, api := serviceRunning(t, project, "serve")
	for _, tc := range []struct {
		name  string
		check func(t *testing.T)
	}{
		{"only under its profile, not on a plain up", func(t *testing.T) {
			require.Equal(t, []string{"demo-sql"}, loader.Profiles, "service %s", name)
			content, err := os.ReadFile("../docker-compose.yml")
			require.NoError(t, err)
			plain, err := loadCompose(content)
			require.NoError(t, err)
			require.NotContains(t, plain.ServiceNames(), name)
		}},
		{"after the migration", func(t *testing.T) {
			require.Equal(t, types.ServiceConditionCompletedSuccessfully, loader.DependsOn["migrate"].Condition)
		}},
		{"into the API's database", func(t *testing.T) {
			require.Contains(t, []string(loader.Command), environment(api, "DATABASE_URL"))
		}},
		{"the committed file, stopping at the first error", func(t *testing.T) {
			require.True(t, slices.ContainsFunc(loader.Volumes, func(v types.ServiceVolumeConfig) bool {
				return filepath.Base(v.Source) == "sql_data" && v.Target == "/sql_data" && v.ReadOnly
			}), "sql_data is mounted read-only at /sql_data: %+v", loader.Volumes)
			require.Contains(t, []string(loader.Command), "ON_ERROR_STOP=1")
			require.Equal(t, "/sql_data/demo.sql", loader.Command[len(loader.Command)-1])
		}},
	} {
		t.Run(tc.name, tc.check)
	}
}
