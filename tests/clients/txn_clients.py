"""Transactions through confluent-kafka (librdkafka's transactional producer and
read_committed consumer).

- A producer with a transactional.id (and enable.idempotence) runs TRANSACTIONS
  transactions over a topic of three partitions, each writing RECORDS_PER_TXN records spread
  over every partition; the even-numbered ones commit, the odd-numbered ones abort (after a
  flush, so their records are in the log). Every value names its transaction and index.
- A read_committed consumer (assign() from the beginning) reads exactly the records of the
  committed transactions: every one, none of an aborted one, no duplicate, each partition's
  in the order they were produced and at the offsets their delivery reports gave.
- A read_uncommitted consumer reads the aborted records too.
- The last stable offset: while a final transaction is open (its records flushed), a
  read_committed consumer stops short of it and ListOffsets (isolation_level
  read_committed) gives its first offset in each partition, while read_uncommitted readers
  see it already; once it commits, the read_committed consumer gets it and the stable offset
  is the high watermark.
- Fencing: a second producer with the same transactional.id (init_transactions) fences the
  first, whose open transaction is aborted (a read_committed consumer never reads it) and
  whose commit then fails with a fatal error; the second one's transaction commits.
"""

import sys
import time
import uuid

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

bootstrap = sys.argv[1]
TRANSACTIONS = 40
RECORDS_PER_TXN = 6
PARTITIONS = 3
DEADLINE_S = 60
run = uuid.uuid4().hex[:8]
topic = f"txn-{run}"
admin = AdminClient({"bootstrap.servers": bootstrap})


def wait_for(what, check, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


admin.create_topics(
    [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=-1)]
)[topic].result(30)
wait_for(
    f"{topic}'s leaders",
    lambda: (t := admin.list_topics(topic, timeout=5).topics.get(topic))
    and t.error is None
    and len(t.partitions) == PARTITIONS
    and all(p.leader >= 0 for p in t.partitions.values()),
)

# The transactions: (transaction, index) -> offset, for every record delivered.
delivered = {}
failed = []


def on_delivery(error, message):
    if error is not None:
        failed.append((error, message.value()))
        return
    t, i = message.value().decode().split(":")[1:3]
    delivered[(int(t), int(i))] = (message.partition(), message.offset())


producer = Producer(
    {
        "bootstrap.servers": bootstrap,
        "transactional.id": f"txn-clients-{run}",
        "enable.idempotence": True,
        "linger.ms": 5,
    }
)
producer.init_transactions(30)
started = time.time()
for t in range(TRANSACTIONS):
    producer.begin_transaction()
    for i in range(RECORDS_PER_TXN):
        value = f"{run}:{t}:{i}".encode()
        producer.produce(
            topic, partition=(t + i) % PARTITIONS, key=str(t), value=value, on_delivery=on_delivery
        )
    if t % 2 == 0:
        producer.commit_transaction(30)
    else:
        # Flushed first, so the aborted records are in the log (a consumer reading
        # uncommitted sees them) before the abort marker.
        if producer.flush(30) != 0:
            raise SystemExit(f"transaction {t}: records left unsent before the abort")
        producer.abort_transaction(30)
took = time.time() - started
if failed:
    raise SystemExit(f"delivery failed: {failed[:5]}")
missing = [
    (t, i) for t in range(TRANSACTIONS) for i in range(RECORDS_PER_TXN) if (t, i) not in delivered
]
if missing:
    raise SystemExit(f"no delivery report for {missing[:10]}")


def expected(keep):
    """Each partition's (transaction, index, offset) of the records `keep` selects, in
    offset order."""
    by_partition = {p: [] for p in range(PARTITIONS)}
    for (t, i), (p, offset) in delivered.items():
        if keep(t):
            by_partition[p].append((t, i, offset))
    for records in by_partition.values():
        records.sort(key=lambda r: r[2])
    return by_partition


def reader(isolation):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"txn-reader-{run}-{isolation}-{uuid.uuid4().hex[:6]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    return consumer


def read(consumer, by_partition, until, what, seconds=DEADLINE_S):
    """Polls into by_partition (partition -> [(transaction, index, offset)]) until
    until(by_partition) holds."""
    deadline = time.time() + seconds
    while not until(by_partition):
        if time.time() > deadline:
            counts = {p: len(r) for p, r in by_partition.items()}
            raise SystemExit(f"{what}: timed out with {counts} records per partition")
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error():
            raise SystemExit(f"{what}: {message.error()}")
        owner, t, i = message.value().decode().split(":")
        assert owner == run, message.value()
        by_partition[message.partition()].append((int(t), int(i), message.offset()))


def quiet(consumer, by_partition, seconds):
    """Polls for `seconds` more, taking whatever comes."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error():
            raise SystemExit(f"{message.error()}")
        _, t, i = message.value().decode().split(":")
        by_partition[message.partition()].append((int(t), int(i), message.offset()))


def check(got, want, what):
    for p in range(PARTITIONS):
        if got[p] != want[p]:
            extra = [r for r in got[p] if r not in want[p]]
            lost = [r for r in want[p] if r not in got[p]]
            dups = len(got[p]) - len(set(got[p]))
            raise SystemExit(
                f"{what}, partition {p}: read {len(got[p])} records, expected {len(want[p])}; "
                f"unexpected {extra[:10]}, missing {lost[:10]}, {dups} duplicates, "
                f"read in order {got[p][:20]}"
            )


committed = expected(lambda t: t % 2 == 0)
everything = expected(lambda t: True)
aborted_count = sum(1 for t, _ in delivered if t % 2 == 1)


def have(want):
    return lambda got: all(len(got[p]) >= len(want[p]) for p in range(PARTITIONS))


# A final transaction left open: records flushed, not committed yet.
final = TRANSACTIONS
producer.begin_transaction()
for p in range(PARTITIONS):
    producer.produce(
        topic, partition=p, key=str(final), value=f"{run}:{final}:{p}".encode(), on_delivery=on_delivery
    )
if producer.flush(30) != 0 or failed:
    raise SystemExit(f"the open transaction's records were not delivered: {failed[:5]}")
open_offsets = {p: delivered[(final, p)][1] for p in range(PARTITIONS)}


def offsets(spec, isolation):
    partitions = {TopicPartition(topic, p): spec for p in range(PARTITIONS)}
    futures = admin.list_offsets(partitions, isolation_level=isolation)
    return {tp.partition: f.result(30).offset for tp, f in futures.items()}


stable = offsets(OffsetSpec.latest(), IsolationLevel.READ_COMMITTED)
high = offsets(OffsetSpec.latest(), IsolationLevel.READ_UNCOMMITTED)
if stable != open_offsets:
    raise SystemExit(f"with a transaction open at {open_offsets}, the stable offsets are {stable}")
if any(high[p] != open_offsets[p] + 1 for p in range(PARTITIONS)):
    raise SystemExit(f"with a transaction open at {open_offsets}, the high watermarks are {high}")

# read_committed: everything committed so far, then nothing more while the last is open.
committed_reader = reader("read_committed")
got = {p: [] for p in range(PARTITIONS)}
read(committed_reader, got, have(committed), "read_committed")
quiet(committed_reader, got, 2)
check(got, committed, "read_committed before the last commit")

# read_uncommitted: aborted records too, and the open transaction's.
uncommitted_reader = reader("read_uncommitted")
seen = {p: [] for p in range(PARTITIONS)}
with_open = expected(lambda t: True)
read(uncommitted_reader, seen, have(with_open), "read_uncommitted")
quiet(uncommitted_reader, seen, 1)
uncommitted_reader.close()
check(seen, with_open, "read_uncommitted")

# The last commits: read_committed gets its records; the stable offset is the end.
producer.commit_transaction(30)
committed = expected(lambda t: t % 2 == 0)
read(committed_reader, got, have(committed), "read_committed after the last commit")
quiet(committed_reader, got, 1)
committed_reader.close()
check(got, committed, "read_committed after the last commit")
stable = offsets(OffsetSpec.latest(), IsolationLevel.READ_COMMITTED)
high = offsets(OffsetSpec.latest(), IsolationLevel.READ_UNCOMMITTED)
if stable != high or any(high[p] <= open_offsets[p] + 1 for p in range(PARTITIONS)):
    raise SystemExit(f"after the last commit: stable offsets {stable}, high watermarks {high}")

# A fresh read_committed reader from the beginning reads the same.
again = reader("read_committed")
fresh = {p: [] for p in range(PARTITIONS)}
read(again, fresh, have(committed), "read_committed again")
quiet(again, fresh, 1)
again.close()
check(fresh, committed, "read_committed from the beginning again")

# A zombie: the first producer of a transactional.id, fenced by a second.
zombie_topic = f"txn-zombie-{run}"
admin.create_topics([NewTopic(zombie_topic, num_partitions=1, replication_factor=-1)])[zombie_topic].result(30)
config = {"bootstrap.servers": bootstrap, "transactional.id": f"txn-zombie-{run}", "enable.idempotence": True}
zombie = Producer(config)
zombie.init_transactions(30)
zombie.begin_transaction()
zombie.produce(zombie_topic, partition=0, value=b"zombie-1")
if zombie.flush(30) != 0:
    raise SystemExit("the first producer's record was not delivered")
successor = Producer(config)
successor.init_transactions(30)
successor.begin_transaction()
successor.produce(zombie_topic, partition=0, value=b"successor")
successor.commit_transaction(30)
try:
    zombie.produce(zombie_topic, partition=0, value=b"zombie-2")
    zombie.commit_transaction(30)
    raise SystemExit("a fenced producer committed")
except KafkaException as e:
    error = e.args[0]
    if not error.fatal():
        raise SystemExit(f"the fenced producer's commit failed with {error}, not a fatal error")
fenced_with = error.name()
zombie_reader = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": f"txn-zombie-reader-{run}",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
    }
)
zombie_reader.assign([TopicPartition(zombie_topic, 0, 0)])
values = []
deadline = time.time() + DEADLINE_S
while b"successor" not in values and time.time() < deadline:
    message = zombie_reader.poll(0.2)
    if message is not None and message.error() is None:
        values.append(message.value())
quiet_until = time.time() + 1
while time.time() < quiet_until:
    message = zombie_reader.poll(0.2)
    if message is not None and message.error() is None:
        values.append(message.value())
zombie_reader.close()
if values != [b"successor"]:
    raise SystemExit(f"after fencing, read_committed read {values}")

committed_count = sum(len(r) for r in committed.values())
print(
    f"transactions: {TRANSACTIONS} of {RECORDS_PER_TXN} records over {PARTITIONS} partitions "
    f"in {took:.1f}s, every other one aborted; read_committed read the {committed_count} "
    f"committed records exactly once, in order, none of the {aborted_count} aborted; "
    f"read_uncommitted read those too; an open transaction held the stable offset at its "
    f"first record {open_offsets} until it committed; a second producer of a "
    f"transactional.id fenced the first ({fenced_with}), whose open transaction was aborted"
)
