"""The replication worker (`kafka-mirrors run --link NAME`): see loop.py."""
from kafka_mirrors.worker.loop import Worker
from kafka_mirrors.worker.source_watch import SourceWatch

__all__ = ["Worker", "SourceWatch"]
