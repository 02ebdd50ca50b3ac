"""Artifacts (``runs/<run>/<stage>/journey.json``) and lineage. See ``registry``."""
from shared.registry.registry import (MANIFEST, MODEL_KINDS, Artifact, ArtifactNotFound, Registry, git_commit,
                                      write_json_atomic)

__all__ = ["MODEL_KINDS", "MANIFEST", "Artifact", "ArtifactNotFound", "Registry", "git_commit", "write_json_atomic"]
