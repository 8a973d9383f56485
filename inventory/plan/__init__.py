"""What to collect: the accounts file and flags, regions, Organizations and region
discovery -> one frozen Plan. Above `aws` (discovery asks AWS); never writes the store."""
