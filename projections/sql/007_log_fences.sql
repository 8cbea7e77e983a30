-- scope: projection
-- Schema version 7: the command processors' fences (streams/_fence.py). A fence record on the
-- events or outcomes topic starts a new owner's epoch on its partition; records a zombie
-- processor (one that had lost the partition) writes after it are not folded (kept in anomalies
-- as 'fenced'). The projector resumes mid-partition from its stored offsets, so it must resume
-- with the fence in force there too: each fence is stored here in the same transaction as the
-- offsets that moved past it. In the projection scope: a rebuild meets the same fences.
CREATE TABLE projection.log_fences (
    topic         text NOT NULL,
    partition     integer NOT NULL,
    kafka_offset  bigint NOT NULL,
    epoch         bigint NOT NULL,
    folded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, kafka_offset)
);
