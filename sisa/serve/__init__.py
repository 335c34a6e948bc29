"""A warm server that keeps torch imported and answers forwarded deletions over a local socket."""
