// Package deploy holds tally's container and Kubernetes manifests; its test checks them.
package deploy
