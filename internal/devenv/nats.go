package devenv

import (
	"errors"
	"fmt"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// StartNATS runs an embedded NATS server with JetStream on 127.0.0.1:port (a free port when
// port is 0) with its streams in storeDir, so that the event pipeline runs with nothing
// installed. The caller shuts it down.
func StartNATS(port int, storeDir string) (*natsserver.Server, error) {
	if port == 0 {
		port = -1 // the server's own spelling of "any free port"; 0 would mean 4222
	}
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: storeDir, NoSigs: true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded NATS did not start within 10s")
	}
	return ns, nil
}
