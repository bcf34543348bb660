"""Operating a GridPilot installation: backup and restore, supervision under systemd,
the host firewall, diagnostics."""
