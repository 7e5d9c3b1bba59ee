package deploy

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/kustomize/kyaml/yaml"
)

// composeFile mirrors the parts of docker-compose.yml that these checks read; YAML anchors
// and merge keys are resolved by the parser.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Profiles    []string          `yaml:"profiles"`
	Volumes     []string          `yaml:"volumes"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	raw, err := os.ReadFile("../docker-compose.yml")
	require.NoError(t, err)
	var f composeFile
	require.NoError(t, yaml.Unmarshal(raw, &f))
	return f
}

// publishedPorts maps each host port a service publishes to its container port, from the
// short syntax "[ip:]host:container[/protocol]".
func publishedPorts(t *testing.T, s composeService) map[string]string {
	t.Helper()
	ports := map[string]string{}
	for _, p := range s.Ports {
		parts := strings.Split(strings.TrimSuffix(p, "/tcp"), ":")
		require.GreaterOrEqual(t, len(parts), 2, "port %q publishes no host port", p)
		ports[parts[len(parts)-2]] = parts[len(parts)-1]
	}
	return ports
}

// serviceRunning returns the service whose command starts with the given tally subcommand or
// program.
func (f composeFile) serviceRunning(t *testing.T, program string) (string, composeService) {
	t.Helper()
	for name, s := range f.Services {
		if len(s.Command) > 0 && s.Command[0] == program {
			return name, s
		}
	}
	t.Fatalf("no service in docker-compose.yml runs %q", program)
	return "", composeService{}
}

// The assignment's README sends people to http://localhost:5000/api/docs; tally's own docs
// and the acceptance suite use :8000. Both must reach the API.
func TestComposePublishesTheAPIOn8000And5000(t *testing.T) {
	t.Parallel()
	_, api := loadCompose(t).serviceRunning(t, "serve")
	port := api.Environment["PORT"]
	require.NotEmpty(t, port, "the API's PORT is set explicitly")
	published := publishedPorts(t, api)
	for _, host := range []string{"8000", "5000"} {
		t.Run(host, func(t *testing.T) {
			require.Equal(t, port, published[host], "host port %s must reach the API's port %s", host, port)
		})
	}
}

// sql_data/demo.sql loads only on request, after the migration, into the API's database.
func TestComposeLoadsSQLDataOnRequest(t *testing.T) {
	t.Parallel()
	f := loadCompose(t)
	name, loader := f.serviceRunning(t, "psql")
	_, api := f.serviceRunning(t, "serve")
	for _, tc := range []struct {
		name  string
		check func(t *testing.T)
	}{
		{"only under its profile, not on a plain up", func(t *testing.T) {
			require.Equal(t, []string{"demo-sql"}, loader.Profiles, "service %s", name)
		}},
		{"after the migration", func(t *testing.T) {
			require.Equal(t, "service_completed_successfully", loader.DependsOn["migrate"].Condition)
		}},
		{"into the API's database", func(t *testing.T) {
			require.Contains(t, loader.Command, api.Environment["DATABASE_URL"])
		}},
		{"the committed file, stopping at the first error", func(t *testing.T) {
			require.Contains(t, loader.Volumes, "./sql_data:/sql_data:ro")
			require.True(t, slices.Contains(loader.Command, "ON_ERROR_STOP=1"), "%q", loader.Command)
			require.Equal(t, "/sql_data/demo.sql", loader.Command[len(loader.Command)-1])
		}},
	} {
		t.Run(tc.name, tc.check)
	}
}
