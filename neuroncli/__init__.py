"""Command-line plumbing shared by the entry points (stdlib only); see `neuroncli.flags`."""
