"""kafka-mirrors: offset-preserving mirror topics for stock Apache Kafka."""

__version__ = "0.1.0"
