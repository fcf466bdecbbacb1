"""Produce 1,000 keyed records with kafka-python, consume them back, compare."""
import sys
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
topic = f"kafka-python-{uuid.uuid4().hex[:8]}"
sent = [(f"key-{i}".encode(), f"value-{i}-{'x' * (i % 50)}".encode()) for i in range(1000)]

# Library defaults: kafka-python 3 is idempotent (InitProducerId, sequence numbers) and acks=all.
producer = KafkaProducer(bootstrap_servers=bootstrap)
futures = [producer.send(topic, key=k, value=v) for k, v in sent]
producer.flush(timeout=30)
offsets = [f.get(timeout=30).offset for f in futures]
assert offsets == list(range(1000)), f"unexpected offsets {offsets[:5]}..."
producer.close()

consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=10000)
partition = TopicPartition(topic, 0)
consumer.assign([partition])
consumer.seek_to_beginning(partition)
received = []
for message in consumer:
    received.append((message.key, message.value))
    if len(received) == len(sent):
        break
consumer.close()
assert received == sent, f"received {len(received)} records, first difference at {next((i for i, (a, b) in enumerate(zip(received, sent)) if a != b), None)}"
print(f"kafka-python: {len(received)} records round-tripped through {topic}")
