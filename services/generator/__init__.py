"""The generator service: a Ray Serve deployment streaming tokens from any registered model artifact."""
