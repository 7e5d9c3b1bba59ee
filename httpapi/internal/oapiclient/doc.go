// Package oapiclient is the Go client that oapi-codegen generates from httpapi/openapi.json.
// It is not tally's client (that is package client); it exists so that a test proves a
// generated client compiles and round-trips against a running server.
package oapiclient

//go:generate go tool oapi-codegen -config oapi-codegen.yaml -o client.gen.go ../../openapi.json
