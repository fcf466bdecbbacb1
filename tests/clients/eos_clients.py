"""Exactly-once consume-transform-produce through confluent-kafka, optionally across a
broker killed (SIGKILL) and restarted midway.

    eos_clients.py BOOTSTRAP [--kill-cmd CMD --restart-cmd CMD] [--records M]
                             [--down-seconds S]

- RECORDS input records (a plain idempotent producer) go to an input topic of three
  partitions.
- The application: a consumer in a group (isolation.level=read_committed, no auto commit,
  subscribe()) polls batches; for each batch a transactional producer begins a transaction,
  writes one output record per input record (to the same partition of an output topic,
  keyed by the input's partition:offset, its value after that), adds the consumer's
  positions with send_offsets_to_transaction() and commits. Errors are handled as
  librdkafka documents: a retriable one retries the call, one that needs an abort aborts
  the transaction and seeks the consumer back to the group's committed offsets, a fatal one
  (the producer fenced, say) makes a new producer with the same transactional.id and a new
  consumer. It stops once the group's committed offsets are the input's end offsets.
- With --kill-cmd: once about a third of the input is committed, in the middle of a
  transaction (its records produced, its offsets not yet sent), CMD runs through the shell;
  --restart-cmd runs --down-seconds later. In both, {coordinator} is replaced by the node id
  of the transaction coordinator of the application's transactional.id (the leader of its
  __transaction_state partition) and {group_coordinator} by the group's (the leader of its
  __consumer_offsets partition), as they were when the kill ran.
- Then a read_committed consumer of the output topic reads exactly one output record per
  input record (none lost, none twice), each with its input's value, each output partition
  in input offset order; a read_uncommitted one counts the records aborted transactions
  left in the log.
"""

import argparse
import subprocess
import sys
import threading
import time
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap = sys.argv[1]
parser = argparse.ArgumentParser(prog="eos_clients.py BOOTSTRAP")
parser.add_argument("--kill-cmd")
parser.add_argument("--restart-cmd")
parser.add_argument("--records", type=int, default=2000)
parser.add_argument("--down-seconds", type=float, default=5.0)
parser.add_argument("--deadline-seconds", type=float, default=240.0)
options = parser.parse_args(sys.argv[2:])

PARTITIONS = 3
BATCH = 50
CALL_TIMEOUT_S = 10
RETRY_DEADLINE_S = 90
FAILURES_IN_A_ROW = 5
run = uuid.uuid4().hex[:8]
input_topic = f"eos-in-{run}"
output_topic = f"eos-out-{run}"
group = f"eos-app-{run}"
transactional_id = f"eos-app-{run}"
admin = AdminClient({"bootstrap.servers": bootstrap})
started = time.time()
deadline = started + options.deadline_seconds


def note(text):
    print(f"[{time.time() - started:6.1f}s] {text}", file=sys.stderr, flush=True)


def wait_for(what, check, seconds=30):
    until = time.time() + seconds
    while time.time() < until:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def create(name):
    admin.create_topics(
        [NewTopic(name, num_partitions=PARTITIONS, replication_factor=-1)]
    )[name].result(30)
    wait_for(
        f"{name}'s leaders",
        lambda: (t := admin.list_topics(name, timeout=5).topics.get(name))
        and t.error is None
        and len(t.partitions) == PARTITIONS
        and all(p.leader >= 0 for p in t.partitions.values()),
    )


create(input_topic)
create(output_topic)

# The input: (partition, offset) -> value.
inputs = {}
failed = []


def on_input(error, message):
    if error is not None:
        failed.append(error)
    else:
        inputs[(message.partition(), message.offset())] = message.value()


feeder = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
for i in range(options.records):
    feeder.produce(input_topic, partition=i % PARTITIONS, value=f"in-{run}-{i}".encode(), on_delivery=on_input)
    feeder.poll(0)
if feeder.flush(30) != 0 or failed or len(inputs) != options.records:
    raise SystemExit(f"input: {len(inputs)} of {options.records} delivered, errors {failed[:5]}")
end = {p: 1 + max(o for (q, o) in inputs if q == p) for p in range(PARTITIONS)}
if sum(end.values()) != options.records:
    raise SystemExit(f"input end offsets {end} for {options.records} records")


# Who coordinates: Kafka's partition of a key (Java's String.hashCode, abs, modulo).
def partition_for(key, partitions):
    h = 0
    units = key.encode("utf-16-be")
    for k in range(0, len(units), 2):
        h = (h * 31 + int.from_bytes(units[k : k + 2], "big")) & 0xFFFFFFFF
    if h >= 1 << 31:
        h -= 1 << 32
    h = 0 if h == -(1 << 31) else abs(h)
    return h % partitions


def leader_for(internal_topic, key):
    try:
        t = admin.list_topics(internal_topic, timeout=10).topics.get(internal_topic)
    except KafkaException:
        return None
    if t is None or t.error is not None or not t.partitions:
        return None
    return t.partitions[partition_for(key, len(t.partitions))].leader


# The kill, and the restart --down-seconds later (on a timer: the application may be
# blocked in a call meanwhile).
kill = {"done": False, "names": {}, "timer": None, "restart_status": None}


def run_command(command):
    command = command.format(**kill["names"])
    note(f"running: {command}")
    return subprocess.run(command, shell=True, timeout=60).returncode


def restart():
    kill["restart_status"] = run_command(options.restart_cmd)


def maybe_kill(committed_so_far):
    if options.kill_cmd is None or kill["done"] or committed_so_far < options.records // 3:
        return
    kill["names"] = {
        "coordinator": leader_for("__transaction_state", transactional_id),
        "group_coordinator": leader_for("__consumer_offsets", group),
    }
    note(f"{committed_so_far} records committed; coordinators {kill['names']}")
    for name, node in kill["names"].items():
        if node is None and "{" + name + "}" in options.kill_cmd + (options.restart_cmd or ""):
            raise SystemExit(f"no {name} known to put in the kill command")
    status = run_command(options.kill_cmd)
    if status != 0:
        raise SystemExit(f"the kill command exited with {status}")
    kill["done"] = True
    if options.restart_cmd:
        kill["timer"] = threading.Timer(options.down_seconds, restart)
        kill["timer"].start()


def retrying(what, call):
    """Calls call() again while it fails with a retriable error."""
    until = time.time() + RETRY_DEADLINE_S
    while True:
        try:
            return call()
        except KafkaException as e:
            error = e.args[0]
            if not error.retriable() or error.fatal() or error.txn_requires_abort():
                raise
            if time.time() > until:
                raise SystemExit(f"{what}: still failing after {RETRY_DEADLINE_S}s: {error}")
            note(f"{what}: {error.name()} (retriable), again")
            time.sleep(0.2)


# The application.
stats = {"committed": 0, "aborted": 0, "recreated": 0, "failing": []}


def new_producer():
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "transaction.timeout.ms": 30000,
            # With the default (rebootstrap), losing every broker at once (a cluster of one
            # killed) makes librdkafka drop its broker handles, and one still cached as the
            # group's coordinator leaves send_offsets_to_transaction() waiting past its timeout
            # for good (librdkafka issue #5511).
            "metadata.recovery.strategy": "none",
            "linger.ms": 5,
        }
    )
    retrying("init_transactions", lambda: producer.init_transactions(CALL_TIMEOUT_S))
    return producer


def new_consumer():
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([input_topic])
    return consumer


def group_offsets(consumer):
    """The group's committed offsets of every input partition (0 where none)."""
    partitions = [TopicPartition(input_topic, p) for p in range(PARTITIONS)]
    got = retrying("committed", lambda: consumer.committed(partitions, timeout=CALL_TIMEOUT_S))
    return {tp.partition: max(tp.offset, 0) for tp in got}


class Recreate(Exception):
    """The application's producer and consumer must be made anew."""


def rewind(consumer):
    """Seeks the consumer back to the group's committed offsets of its partitions."""
    assignment = consumer.assignment()
    if not assignment:
        return
    got = retrying("committed", lambda: consumer.committed(assignment, timeout=CALL_TIMEOUT_S))
    for tp in got:
        offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        try:
            consumer.seek(TopicPartition(input_topic, tp.partition, offset))
        except KafkaException as e:
            # Not fetching that partition (any more): a new consumer starts at the commits.
            raise Recreate(f"seek: {e.args[0]}")


def process(producer, consumer, messages, positions):
    """One transaction for a batch. Returns whether it committed."""
    try:
        producer.begin_transaction()
        for m in messages:
            key = f"{m.partition()}:{m.offset()}".encode()
            producer.produce(output_topic, partition=m.partition(), key=key, value=key + b"=" + m.value())
        maybe_kill(sum(positions.values()))
        offsets = consumer.position(
            [TopicPartition(input_topic, p) for p in sorted({m.partition() for m in messages})]
        )
        retrying(
            "send_offsets_to_transaction",
            lambda: producer.send_offsets_to_transaction(
                offsets, consumer.consumer_group_metadata(), CALL_TIMEOUT_S
            ),
        )
        retrying("commit_transaction", lambda: producer.commit_transaction(CALL_TIMEOUT_S))
    except KafkaException as e:
        error = e.args[0]
        if not error.txn_requires_abort():
            raise
        note(f"transaction failed: {error.name()} ({error.str()}); aborting")
        retrying("abort_transaction", lambda: producer.abort_transaction(CALL_TIMEOUT_S))
        rewind(consumer)
        stats["aborted"] += 1
        stats["failing"].append(f"{error.name()} ({error.str()})")
        if len(stats["failing"]) >= FAILURES_IN_A_ROW:
            raise SystemExit(f"{len(stats['failing'])} transactions in a row failed: {stats['failing']}")
        return False
    for tp in offsets:
        positions[tp.partition] = max(positions[tp.partition], tp.offset)
    stats["committed"] += 1
    stats["failing"] = []
    return True


def done(positions):
    return all(positions[p] >= end[p] for p in range(PARTITIONS))


producer = new_producer()
consumer = new_consumer()
positions = {p: 0 for p in range(PARTITIONS)}
while True:
    if time.time() > deadline:
        if kill["timer"] is not None:
            kill["timer"].join()
        raise SystemExit(
            f"the application did not finish in {options.deadline_seconds}s: committed "
            f"{positions} of {end}; {stats}"
        )
    try:
        batch = consumer.consume(BATCH, 0.5)
        messages = []
        for m in batch:
            if m.error() is None:
                messages.append(m)
            elif m.error().fatal():
                raise KafkaException(m.error())
            else:
                note(f"consumer: {m.error()}")
        if not messages:
            # Idle: has the group committed everything?
            positions = group_offsets(consumer)
            if done(positions):
                break
            continue
        process(producer, consumer, messages, positions)
    except (KafkaException, Recreate) as e:
        if isinstance(e, KafkaException):
            error = e.args[0]
            if not error.fatal():
                raise SystemExit(f"the application failed: {error}")
            why = f"{error.name()} ({error.str()})"
        else:
            why = e.args[0]
        # A new producer with the same transactional.id (it fences the old one and aborts
        # whatever transaction it left open) and a new consumer from the group's offsets.
        note(f"{why}; a new producer and consumer")
        stats["recreated"] += 1
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as e:
            note(f"closing the consumer: {e}")
        del producer
        producer = new_producer()
        consumer = new_consumer()
        positions = group_offsets(consumer)
took = time.time() - started
consumer.close()
del producer
if options.kill_cmd and not kill["done"]:
    raise SystemExit("the kill never ran")
if kill["timer"] is not None:
    kill["timer"].join()
    if kill["restart_status"] != 0:
        raise SystemExit(f"the restart command exited with {kill['restart_status']}")


# The output, read_committed: one record per input record.
def read_output(isolation):
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"eos-check-{run}-{isolation}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
        }
    )
    reader.assign([TopicPartition(output_topic, p, 0) for p in range(PARTITIONS)])
    records = {p: [] for p in range(PARTITIONS)}
    want = options.records
    until = time.time() + 60
    quiet_since = time.time()
    while time.time() < until:
        m = reader.poll(0.2)
        if m is None:
            # Two quiet seconds after the count is reached (read_uncommitted reads more).
            count = sum(len(r) for r in records.values())
            if count >= want and time.time() - quiet_since > 2:
                break
            continue
        if m.error():
            raise SystemExit(f"output reader ({isolation}): {m.error()}")
        quiet_since = time.time()
        records[m.partition()].append((m.key(), m.value()))
    reader.close()
    return records


output = read_output("read_committed")
count = {}
problems = []
for p, records in output.items():
    last = -1
    for key, value in records:
        count[key] = count.get(key, 0) + 1
        q, o = (int(x) for x in key.decode().split(":"))
        if q != p:
            problems.append(f"{key} in output partition {p}")
        if (q, o) not in inputs:
            problems.append(f"{key}: no such input record")
        elif value != key + b"=" + inputs[(q, o)]:
            problems.append(f"{key}: value {value}")
        if o <= last and count[key] == 1:
            problems.append(f"output partition {p}: {key} after offset {last}")
        last = max(last, o)
duplicates = {k: n for k, n in count.items() if n > 1}
lost = [f"{p}:{o}" for (p, o) in sorted(inputs) if f"{p}:{o}".encode() not in count]
if duplicates or lost or problems:
    raise SystemExit(
        f"output: {sum(count.values())} records for {options.records} inputs; "
        f"{len(duplicates)} duplicated (e.g. {sorted(duplicates.items())[:10]}), "
        f"{len(lost)} lost (e.g. {lost[:10]}), other problems {problems[:10]}"
    )
final_offsets = group_offsets(Consumer({"bootstrap.servers": bootstrap, "group.id": group}))
if final_offsets != end:
    raise SystemExit(f"the group's committed offsets are {final_offsets}, the input ends at {end}")
in_log = sum(len(r) for r in read_output("read_uncommitted").values())

killed = ""
if options.kill_cmd:
    killed = (
        f"; a broker killed ({options.kill_cmd.format(**kill['names'])}) after a third, "
        f"restarted {options.down_seconds:.0f}s later"
    )
print(
    f"consume-transform-produce: {options.records} input records over {PARTITIONS} "
    f"partitions, {stats['committed']} transactions committed, {stats['aborted']} aborted, "
    f"the application recreated {stats['recreated']} times{killed}; in {took:.1f}s; "
    f"read_committed read each input's output record exactly once, in order "
    f"({in_log - options.records} aborted output records in the log); the group "
    f"committed the input's end offsets {end}"
)
