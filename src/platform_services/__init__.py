"""The example platform of the seeds, served on grpcstack."""
