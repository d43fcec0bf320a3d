"""The replication engine: plans offset-preserving writes from what the source shows and
checks what the sink confirms. No Kafka import anywhere in this package; the
confluent-kafka adapters behind `interfaces.PartitionSource` / `PartitionSink` live in
`kafka_mirrors.kafka.partition`."""
