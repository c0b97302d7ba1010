"""Device profiles (memory, bandwidth, compute), measuring this machine's, and speed predictions."""
