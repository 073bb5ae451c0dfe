"""The running system: settings, the composition root, workers, the supervisor, rebuilds, logs, metrics."""
