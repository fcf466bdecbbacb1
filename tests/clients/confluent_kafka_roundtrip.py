"""Produce 1,000 keyed records with confluent-kafka (librdkafka), consume them back, compare."""
import sys
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING

bootstrap = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
topic = f"confluent-kafka-{uuid.uuid4().hex[:8]}"
sent = [(f"key-{i}".encode(), f"value-{i}-{'y' * (i % 50)}".encode()) for i in range(1000)]

errors = []
producer = Producer({"bootstrap.servers": bootstrap})
for key, value in sent:
    producer.produce(topic, key=key, value=value, on_delivery=lambda err, msg: err and errors.append(err))
remaining = producer.flush(30)
assert remaining == 0 and not errors, f"{remaining} undelivered, errors: {errors[:3]}"

consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "roundtrip", "enable.auto.commit": False})
consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
received = []
for _ in range(200):
    for message in consumer.consume(num_messages=1000, timeout=0.5):
        assert message.error() is None, message.error()
        received.append((message.key(), message.value()))
    if len(received) >= len(sent):
        break
consumer.close()
assert received == sent, f"received {len(received)} records"
print(f"confluent-kafka: {len(received)} records round-tripped through {topic}")
