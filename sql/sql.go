// Package sql embeds the schema: ordered goose migrations under migrations/.
// internal/migrate applies them; nothing else reads these files.
package sql

import "embed"

// Migrations holds migrations/NNNNN_name.sql, applied in order.
//
//go:embed migrations/*.sql
var Migrations embed.FS
