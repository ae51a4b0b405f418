"""Long-running trio tasks: listeners, spool writer, log sinks."""
