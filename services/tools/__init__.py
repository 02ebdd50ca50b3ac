"""The tool executor service: allowlisted tools run for requests that arrive over the bus."""
