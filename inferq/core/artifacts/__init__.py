"""Model artifacts: safetensors weights, one file or a directory, in a content-addressed
store (a directory or S3), each file checked against its SHA-256 before anything loads it.

Nothing is ever unpickled: safetensors holds raw tensors and a string-to-string header.
"""

from inferq.core.artifacts.header import mismatches, read_header, read_header_of
from inferq.core.artifacts.manifest import Artifact, FileEntry, hash_file
from inferq.core.artifacts.packing import digest, pack, read_tensors, unpack
from inferq.core.artifacts.store import (
    ArtifactStore,
    ArtifactTooLarge,
    blob_key,
    manifest_key,
    open_store,
)

__all__ = [
    "Artifact",
    "ArtifactStore",
    "ArtifactTooLarge",
    "FileEntry",
    "blob_key",
    "digest",
    "hash_file",
    "manifest_key",
    "mismatches",
    "open_store",
    "pack",
    "read_header",
    "read_header_of",
    "read_tensors",
    "unpack",
]
