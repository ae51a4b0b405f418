"""The places that touch the outside world: sockets, TLS, DNS, disk, config files."""
