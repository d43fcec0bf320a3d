"""The one Kafka seam: every confluent-kafka call goes through this package. Admin futures
are awaited with a timeout and Kafka error codes become typed errors (errors.py)."""
