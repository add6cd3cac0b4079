// Package configs holds the example configuration files; dev.yaml is also
// the built-in configuration of `portcullis dev`.
package configs

import _ "embed"

// Dev is configs/dev.yaml.
//
//go:embed dev.yaml
var Dev []byte
