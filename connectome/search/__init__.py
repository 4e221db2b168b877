"""Search by dataset name, cell name, cell type, segment id, cell id and synapse id."""
