"""The `pipeline` command line, on top of the runtime (the runtime never imports back from here)."""
