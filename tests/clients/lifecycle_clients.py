"""The log's lifecycle through confluent-kafka (librdkafka's admin API and consumer).

- CreateTopics with configs; DescribeConfigs reports them as the topic's.
- IncrementalAlterConfigs SET, APPEND, SUBTRACT and DELETE, read back by DescribeConfigs;
  a bad value is refused with INVALID_CONFIG naming the key.
- Retention: old records (timestamped an hour ago) in closed segments go once retention.ms
  is set below their age; ListOffsets earliest moves; a consumer told to start at offset 0
  gets OFFSET_OUT_OF_RANGE and resets to the new start (auto.offset.reset=earliest).
- DeleteRecords moves a partition's start; a consumer from the beginning starts there.
- Compaction: a topic with cleanup.policy=compact keeps each key's last value once the
  cleaner has run (a consumer from offset 0 reads fewer records, each at the offset it was
  written, and the last one of each key); a record without a key is refused (INVALID_RECORD).

The broker must apply retention often (run.sh starts it with
--retention-check-interval-ms 500).
"""

import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    OffsetSpec,
)

bootstrap = sys.argv[1]
admin = AdminClient({"bootstrap.servers": bootstrap})
run = uuid.uuid4().hex[:8]


def wait_for(what, check, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def create(name, configs):
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=-1, config=configs)]
    )
    futures[name].result(30)
    # Until every broker names it with a leader.
    wait_for(
        f"{name}'s leader",
        lambda: (t := admin.list_topics(name, timeout=5).topics.get(name))
        and t.error is None
        and all(p.leader >= 0 for p in t.partitions.values()),
    )


def configs_of(name):
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin.describe_configs([resource])[resource].result(30)
    return {key: (entry.value, entry.source) for key, entry in entries.items()}


def alter(name, *entries):
    resource = ConfigResource(
        ConfigResource.Type.TOPIC, name, incremental_configs=list(entries)
    )
    return admin.incremental_alter_configs([resource])[resource]


def earliest(name):
    partition = TopicPartition(name, 0)
    offsets = admin.list_offsets({partition: OffsetSpec.earliest()})
    return offsets[partition].result(30).offset


def consume_from(name, offset, count):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lifecycle-{run}-{name}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(name, 0, offset)])
    got = []
    deadline = time.time() + 30
    while len(got) < count and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        got.append((message.offset(), message.value()))
    consumer.close()
    if len(got) < count:
        raise SystemExit(f"{name}: read {len(got)} of {count} records: {got}")
    return got


# Configs: created with, read back, changed incrementally.
topic = f"configs-{run}"
create(topic, {"retention.ms": "3600000"})
value, source = configs_of(topic)["retention.ms"]
assert value == "3600000", value
assert source == ConfigResource.Type.TOPIC or int(source) == 1, source
alter(
    topic,
    ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
).result(30)
seen = configs_of(topic)
assert seen["retention.ms"][0] == "7200000", seen["retention.ms"]
assert seen["cleanup.policy"][0] == "compact,delete", seen["cleanup.policy"]
alter(
    topic,
    ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SUBTRACT),
    ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
).result(30)
seen = configs_of(topic)
assert seen["cleanup.policy"][0] == "delete", seen["cleanup.policy"]
assert seen["retention.ms"][0] == "604800000", seen["retention.ms"]
try:
    alter(
        topic,
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET),
    ).result(30)
    raise SystemExit("retention.ms=soon was taken")
except KafkaException as e:
    error = e.args[0]
    assert error.name() == "INVALID_CONFIG", error
    assert "retention.ms" in error.str(), error
print("configs: created, described, set, appended, subtracted, deleted; a bad value refused")

# Retention: closed segments past retention.ms go; a consumer below the start resets.
topic = f"retained-{run}"
create(topic, {"segment.bytes": "2048"})
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
an_hour_ago = int(time.time() * 1000) - 3_600_000
for i in range(40):
    producer.produce(topic, value=b"old-%03d" % i + b"." * 200, timestamp=an_hour_ago)
    producer.flush(30)
for i in range(3):
    producer.produce(topic, value=b"new-%03d" % i)
producer.flush(30)
assert earliest(topic) == 0
alter(
    topic,
    ConfigEntry("retention.ms", "600000", incremental_operation=AlterConfigOpType.SET),
).result(30)
start = wait_for(f"{topic}'s start to move", lambda: earliest(topic))
records = consume_from(topic, 0, 1)
assert records[0][0] == start, (records[0], start)
assert records[0][1].startswith(b"old-") or records[0][1].startswith(b"new-"), records[0]
print(f"retention: the log starts at {start}; a consumer at 0 was reset there")

# DeleteRecords moves the start; a consumer from the beginning starts there.
topic = f"deleted-{run}"
create(topic, {})
for i in range(10):
    producer.produce(topic, value=b"v%d" % i)
producer.flush(30)
result = admin.delete_records([TopicPartition(topic, 0, 6)])
low = result[TopicPartition(topic, 0, 6)].result(30)
assert low.low_watermark == 6, low
assert earliest(topic) == 6
records = consume_from(topic, 0, 4)
assert [offset for offset, _ in records] == [6, 7, 8, 9], records
assert records[0][1] == b"v6", records
print("delete records: the start moved to 6, and consumers start there")

# Compaction: the cleaner keeps each key's last record; a keyless record is refused.
topic = f"compacted-{run}"
create(topic, {"cleanup.policy": "compact", "segment.bytes": "2048"})
written = {}
delivered = []


def on_delivery(error, message):
    delivered.append((error, message))


keys = [b"key-%d" % k for k in range(8)]
for round_ in range(25):
    for key in keys:
        value = key + b"=%02d" % round_ + b"." * 60
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    producer.flush(30)
for error, message in delivered:
    assert error is None, error
    written[message.offset()] = (message.key(), message.value())
last_of = {}
for offset in sorted(written):
    key, value = written[offset]
    last_of[key] = (offset, value)
delivered.clear()
producer.produce(topic, value=b"no key", on_delivery=on_delivery)
producer.flush(30)
error = delivered[0][0]
assert error is not None and error.name() == "INVALID_RECORD", error
end = max(written) + 1


def read_compacted():
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lifecycle-{run}-{topic}-{time.time()}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.time() + 30
    while time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        got.append((message.offset(), message.key(), message.value()))
        if message.offset() == end - 1:
            break
    consumer.close()
    return got


def cleaned():
    got = read_compacted()
    return got if len(got) < len(written) // 2 else None


got = wait_for(f"{topic} to be cleaned", cleaned, seconds=60)
offsets = [offset for offset, _, _ in got]
assert offsets == sorted(set(offsets)), offsets
for offset, key, value in got:
    assert written[offset] == (key, value), (offset, key, value)
for key, (offset, value) in last_of.items():
    assert (offset, key, value) in got, (key, offset)
print(f"compaction: {len(written)} records written over {len(keys)} keys, {len(got)} left; each key's last kept; a keyless record refused")
