"""gRPC shell around the clipmatch library: ReferenceService, MatchService, health, reflection."""
