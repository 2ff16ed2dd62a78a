// Package buildinfo carries the version stamped in at build time.
package buildinfo

import "runtime/debug"

// Version is set with -ldflags "-X github.com/shardwarden/shardwarden/internal/buildinfo.Version=...".
var Version = ""

// String returns the stamped version, else the module version Go recorded, else "dev".
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
