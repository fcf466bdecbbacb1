"""Consumer groups from Python: confluent-kafka's subscribe() with two members sharing a
topic's partitions (with the classic protocol, and with KIP-848's, group.protocol=consumer),
and kafka-python's KafkaConsumer(group_id=...); each commits, and the group started again
resumes from its commits."""
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import KafkaAdminClient

bootstrap = sys.argv[1]
DEADLINE_S = 60
RECORDS = 400


def produce(topic, count, start=0):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(start, start + count):
        p.produce(topic, key=str(i), value=str(i))
    assert p.flush(30) == 0, "records left unsent"


def new_topic(partitions):
    topic = "group-%s" % uuid.uuid4().hex[:12]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions)]).values():
        future.result(30)
    return topic


def confluent_members(protocol):
    topic = new_topic(4)
    group = "confluent-%s-%s" % (protocol, uuid.uuid4().hex[:8])
    produce(topic, RECORDS)
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "group.protocol": protocol,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if protocol == "classic":
        config.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    members = [Consumer(config), Consumer(config)]
    for m in members:
        m.subscribe([topic])
    seen = [set(), set()]
    started = time.time()
    while len(seen[0] | seen[1]) < RECORDS:
        assert time.time() - started < DEADLINE_S, "consumed %d of %d" % (len(seen[0] | seen[1]), RECORDS)
        for i, m in enumerate(members):
            msg = m.poll(0.1)
            if msg is not None and msg.error() is None:
                seen[i].add(int(msg.value()))
    # Both members are given partitions once the group settles.
    started = time.time()
    while not all(m.assignment() for m in members):
        assert time.time() - started < DEADLINE_S, "a member was never assigned partitions"
        for m in members:
            m.poll(0.1)
    for m in members:
        m.commit(asynchronous=False)
        m.close()
    assert seen[0] | seen[1] == set(range(RECORDS))
    # The group again: nothing before the commits, only what came after.
    produce(topic, 10, start=RECORDS)
    again = Consumer(config)
    again.subscribe([topic])
    got = set()
    started = time.time()
    while len(got) < 10 and time.time() - started < DEADLINE_S:
        msg = again.poll(0.2)
        if msg is not None and msg.error() is None:
            got.add(int(msg.value()))
    again.close()
    assert got == set(range(RECORDS, RECORDS + 10)), "resumed with %s" % sorted(got)[:20]
    print("confluent-kafka subscribe() (group.protocol=%s): %d records over two members of %s, resumed at its commits" % (protocol, RECORDS, group))


def kafka_python_group():
    topic = new_topic(2)
    group = "kafka-python-" + uuid.uuid4().hex[:8]
    produce(topic, RECORDS)

    def consumer():
        return KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=3000,
        )

    c = consumer()
    got = set()
    started = time.time()
    while len(got) < RECORDS:
        assert time.time() - started < DEADLINE_S, "kafka-python consumed %d of %d" % (len(got), RECORDS)
        for records in c.poll(timeout_ms=500).values():
            got.update(int(r.value) for r in records)
    c.commit()
    committed = sum(c.committed(tp) or 0 for tp in c.assignment())
    assert committed == RECORDS, "committed %d of %d" % (committed, RECORDS)
    c.close()
    produce(topic, 5, start=RECORDS)
    c = consumer()
    more = set()
    started = time.time()
    while len(more) < 5 and time.time() - started < DEADLINE_S:
        for records in c.poll(timeout_ms=500).values():
            more.update(int(r.value) for r in records)
    c.close()
    assert more == set(range(RECORDS, RECORDS + 5)), "resumed with %s" % sorted(more)[:20]
    print("kafka-python KafkaConsumer(group_id=%s): %d records, committed, resumed" % (group, RECORDS))
    # The group is empty now: kafka-python's admin client lists and describes it, deletes
    # its offsets of one partition (OffsetDelete, KIP-496), then the group (DeleteGroups).
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    listed = admin.list_groups()
    assert any(group in str(g) for g in listed), "%s not listed: %s" % (group, listed)
    described = admin.describe_groups([group])
    assert "Empty" in str(described), "described as %s" % described
    admin.delete_group_offsets(group, [KafkaTopicPartition(topic, 0)])
    left = admin.list_group_offsets({group: None})
    assert "partition=0" not in str(left) and "partition=1" in str(left), "after OffsetDelete: %s" % left
    admin.delete_groups([group])
    gone = admin.list_group_offsets({group: None})
    assert "partition=1" not in str(gone), "after DeleteGroups: %s" % gone
    admin.close()
    print("kafka-python admin: %s listed, described, its offsets and then itself deleted" % group)


confluent_members("classic")
confluent_members("consumer")
kafka_python_group()
