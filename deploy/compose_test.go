package deploy

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
)

// loadCompose reads a compose file with the Compose Specification's own loader, as
// `docker compose` does: schema validation (unknown keys fail), interpolation (a malformed
// ${...} fails) and the consistency check (a reference to a missing service fails). The
// environment is empty, so the result does not depend on the machine's variables or a .env.
// Services under a profile are left out unless one of profiles ("*" for all) enables them.
func loadCompose(content []byte, profiles ...string) (*types.Project, error) {
	return loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  ".",
		ConfigFiles: []types.ConfigFile{{Filename: "docker-compose.yml", Content: content}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) {
		o.SetProjectName("tally", true)
		o.Profiles = profiles
	})
}

func TestComposeFile(t *testing.T) {
	t.Parallel()
	content, err := os.ReadFile("../docker-compose.yml")
	require.NoError(t, err)
	project, err := loadCompose(content)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"postgres", "nats", "migrate", "api", "relay"}, project.ServiceNames())
	for _, name := range []string{"migrate", "api", "relay"} {
		svc := project.Services[name]
		require.True(t, svc.ReadOnly, "%s: read_only, as in Kubernetes", name)
		require.Equal(t, "65532:65532", svc.User, name)
		require.Equal(t, []string{"ALL"}, svc.CapDrop, name)
	}
	require.Equal(t, types.ServiceConditionCompletedSuccessfully, project.Services["api"].DependsOn["migrate"].Condition)

	// Each broken copy must be refused, which proves the check above is strict.
	for _, tc := range []struct {
		name, old, new, problem string
	}{
		{name: "unknown key", old: "  relay:\n", new: "  relay:\n    restart_policy: always\n",
			problem: "services.relay.restart_policy"},
		{name: "bad interpolation", old: "LOG_LEVEL: info", new: "LOG_LEVEL: ${LOG_LEVEL",
			problem: "invalid interpolation format"},
		{name: "depends_on a missing service", old: "      nats:\n        condition: service_healthy",
			new: "      natz:\n        condition: service_healthy", problem: "depends on undefined service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Contains(t, string(content), tc.old)
			broken := strings.Replace(string(content), tc.old, tc.new, 1)
			_, err := loadCompose([]byte(broken))
			require.ErrorContains(t, err, tc.problem)
		})
	}
}
