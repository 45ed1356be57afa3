"""Wire contracts: protobuf v1 validation, partitioning, decision bytes, currencies, units and
names."""
