"""Clinical scores (ecrf.scores) checked against the protocol tables: /work/shared/domain/README.md §2-4."""
