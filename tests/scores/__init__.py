"""Clinical scores (ecrf.scores) checked against the protocol tables: shared/domain/README.md §2-4."""
