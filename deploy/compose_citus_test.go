package deploy

import (
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
)

// The Citus image pinned to a release of Citus 13 on PostgreSQL 15, the plain stack's major
// version.
var citusImage = regexp.MustCompile(`^citusdata/citus:13\.[0-9]+\.[0-9]+-pg15$`)

// The citus profile: a coordinator and two workers, registered once all three answer, and
// tally's migration, API and relay on the coordinator.
func TestComposeCitusProfile(t *testing.T) {
	t.Parallel()
	content, err := os.ReadFile("../docker-compose.yml")
	require.NoError(t, err)
	plain, err := loadCompose(content)
	require.NoError(t, err)
	project, err := loadCompose(content, "citus")
	require.NoError(t, err)

	nodes := []string{"citus-coordinator", "citus-worker-1", "citus-worker-2"}
	workers := nodes[1:]
	tally := []string{"citus-migrate", "citus-api", "citus-relay"}
	for _, name := range append(append(slices.Clone(nodes), "citus-register"), tally...) {
		require.Contains(t, project.ServiceNames(), name)
		require.NotContains(t, plain.ServiceNames(), name, "%s runs only under the citus profile", name)
	}
	coordinator := project.Services["citus-coordinator"]
	database := environment(coordinator, "POSTGRES_DB")
	require.NotEmpty(t, database)

	t.Run("nodes", func(t *testing.T) {
		for _, name := range nodes {
			s := project.Services[name]
			require.Regexp(t, citusImage, s.Image, name)
			require.NotNil(t, s.HealthCheck, "%s: registration waits for it to answer", name)
			// Citus connects between nodes as the same role to the same database name.
			for _, key := range []string{"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGUSER", "PGPASSWORD"} {
				require.Equal(t, environment(coordinator, key), environment(s, key), "%s: %s", name, key)
			}
			require.Equal(t, environment(s, "POSTGRES_USER"), environment(s, "PGUSER"), name)
			require.Equal(t, environment(s, "POSTGRES_PASSWORD"), environment(s, "PGPASSWORD"), name)
			require.True(t, slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
				return v.Type == types.VolumeTypeVolume && v.Target == "/var/lib/postgresql/data"
			}), "%s keeps its data in a volume of its own", name)
		}
		require.Len(t, uniqueVolumes(project, nodes), len(nodes), "no two nodes share a data volume")
	})

	t.Run("registration", func(t *testing.T) {
		reg := project.Services["citus-register"]
		require.Regexp(t, citusImage, reg.Image)
		require.Equal(t, "psql", reg.Command[0])
		require.Contains(t, []string(reg.Command), "ON_ERROR_STOP=1")
		script := strings.Join(reg.Command, "\n")
		require.Contains(t, script, "citus_set_coordinator_host('citus-coordinator', 5432)")
		for _, w := range workers {
			require.Contains(t, script, fmt.Sprintf("citus_add_node('%s', 5432)", w))
		}
		for _, n := range nodes {
			require.Equal(t, types.ServiceConditionHealthy, reg.DependsOn[n].Condition, "registration waits for %s", n)
		}
		checkCoordinatorURL(t, reg.Command[1], database)
	})

	t.Run("tally on the coordinator", func(t *testing.T) {
		for _, name := range tally {
			s := project.Services[name]
			require.True(t, s.ReadOnly, "%s: read_only, as in Kubernetes", name)
			require.Equal(t, "65532:65532", s.User, name)
			require.Equal(t, []string{"ALL"}, s.CapDrop, name)
			checkCoordinatorURL(t, environment(s, "DATABASE_URL"), database)
		}
		require.Equal(t, types.ServiceConditionCompletedSuccessfully, project.Services["citus-migrate"].DependsOn["citus-register"].Condition,
			"the migration distributes tables over the registered workers")
		for _, name := range []string{"citus-api", "citus-relay"} {
			require.Equal(t, types.ServiceConditionCompletedSuccessfully, project.Services[name].DependsOn["citus-migrate"].Condition, name)
		}
		require.Equal(t, "false", environment(project.Services["citus-api"], "MIGRATE_ON_START"))
		require.Equal(t, []string{"serve"}, []string(project.Services["citus-api"].Command))
		require.Equal(t, []string{"relay"}, []string(project.Services["citus-relay"].Command))
	})

	t.Run("runs beside the plain stack", func(t *testing.T) {
		all, err := loadCompose(content, "*")
		require.NoError(t, err)
		owner := map[string]string{}
		for name, s := range all.Services {
			for _, p := range s.Ports {
				require.NotContains(t, owner, p.Published, "host port %s published by %s and %s", p.Published, owner[p.Published], name)
				owner[p.Published] = name
			}
		}
		require.Equal(t, "citus-api", owner["8100"])
	})
}

// checkCoordinatorURL requires a PostgreSQL URL to reach the coordinator's database.
func checkCoordinatorURL(t *testing.T, raw, database string) {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err, raw)
	require.Equal(t, "citus-coordinator", u.Hostname(), raw)
	require.Equal(t, "/"+database, u.Path, raw)
}

// uniqueVolumes returns the named volumes the services mount.
func uniqueVolumes(p *types.Project, services []string) map[string]bool {
	out := map[string]bool{}
	for _, name := range services {
		for _, v := range p.Services[name].Volumes {
			if v.Type == types.VolumeTypeVolume {
				out[v.Source] = true
			}
		}
	}
	return out
}
