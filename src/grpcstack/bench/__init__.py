"""`grpcstack bench`: measurements that compare variants interleaved in one run."""
