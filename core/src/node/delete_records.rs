//! DeleteRecords: a partition's log start moved forward on request.
//!
//! The leader appends a control batch naming the new start (`log::log_start_batch`) and
//! answers once it commits; every replica moves its start when its high watermark passes the
//! batch (`PartitionLog::apply_committed_starts`), so whichever replica leads next holds the
//! batch and starts where the answer said. Kafka's leader instead waits for every in-sync
//! follower to report the new start; with Raft's elections a replica outside that set could
//! lead next, so the start travels in the log, like any other committed fact.

use super::{CommitWait, Instant, Node};
use crate::disk::Disk;
use crate::log::log_start_batch;
use crate::protocol::codes;
use crate::protocol::messages::delete_records_response::*;
use crate::protocol::messages::*;
use crate::record::RecordBatch;

/// DeleteRecords' offset meaning "the high watermark".
const HIGH_WATERMARK: i64 = -1;

impl<D: Disk> Node<D> {
    /// The answer, and the partitions whose markers it waits to see committed.
    pub(super) fn delete_records(
        &mut self,
        now: Instant,
        request: &DeleteRecordsRequest,
    ) -> (DeleteRecordsResponse, Vec<CommitWait>) {
        let mut response = DeleteRecordsResponse::default();
        let mut waits = Vec::new();
        for (t, topic) in request.topics.iter().enumerate() {
            let mut result = DeleteRecordsTopicResult {
                name: topic.name.clone(),
                ..Default::default()
            };
            for (p, partition) in topic.partitions.iter().enumerate() {
                let (low_watermark, error_code) =
                    match self.delete_partition(now, &topic.name, partition) {
                        Ok((start, None)) => (start, codes::NONE),
                        Ok((start, Some(wait))) => {
                            waits.push(CommitWait { at: (t, p), ..wait });
                            (start, codes::NONE)
                        }
                        Err(code) => (-1, code),
                    };
                result.partitions.push(DeleteRecordsPartitionResult {
                    partition_index: partition.partition_index,
                    low_watermark,
                    error_code,
                    ..Default::default()
                });
            }
            response.topics.push(result);
        }
        (response, waits)
    }

    /// One partition: its start now, if nothing is to move, or the marker appended and the
    /// commit it waits for.
    fn delete_partition(
        &mut self,
        now: Instant,
        topic: &str,
        partition: &crate::protocol::messages::delete_records_request::DeleteRecordsPartition,
    ) -> Result<(i64, Option<CommitWait>), i16> {
        if Self::internal_topic(topic) {
            // Its coordinators replay it whole; a cut would lose groups.
            return Err(codes::INVALID_TOPIC_EXCEPTION);
        }
        let config = self.topic_config(topic);
        if config.compact && !config.delete {
            // Kafka refuses it too: compaction decides what a compacted topic keeps.
            return Err(codes::POLICY_VIOLATION);
        }
        let index = partition.partition_index;
        let p = super::handlers::held_partition(&mut self.topics, &self.image, topic, index)?;
        let log_id = p.log_id;
        let Ok(log) = p.log.as_mut() else {
            return Err(codes::KAFKA_STORAGE_ERROR);
        };
        let Some(replica) = p.replica.as_ref().filter(|r| r.is_leader() && r.serving()) else {
            return Err(codes::NOT_LEADER_OR_FOLLOWER);
        };
        let (epoch, high_watermark) = (replica.leader_epoch(), replica.high_watermark());
        let offset = match partition.offset {
            HIGH_WATERMARK => high_watermark,
            offset if (0..=high_watermark).contains(&offset) => offset,
            _ => return Err(codes::OFFSET_OUT_OF_RANGE),
        };
        if offset == 0 {
            return Ok((log.log_start_offset(), None));
        }
        // Written even when this log already starts past `offset` (its own retention): other
        // replicas may not, and the marker holds them all to it.
        let batch = RecordBatch::parse(log_start_batch(offset, now.as_millis()))
            .expect("a built batch parses");
        let (base, last) = log
            .append(&mut self.disk, &batch, epoch)
            .map_err(|_| codes::KAFKA_STORAGE_ERROR)?;
        let low_watermark = offset.max(log.log_start_offset());
        self.replica_appended(now, log_id, &[(base, last)]);
        // Checked at the end of this step: it may be committed already.
        self.commit_checked_version = self.data_version.wrapping_sub(1);
        Ok((
            low_watermark,
            Some(CommitWait {
                log_id,
                offset: last + 1,
                epoch,
                at: (0, 0),
            }),
        ))
    }
}
