"""The mesh: gRPC transport, peers, discovery and TLS between nodes."""
