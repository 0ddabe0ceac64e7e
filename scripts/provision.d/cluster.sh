# The cluster tests: a 3-node RabbitMQ cluster beside the default node, loopback only (c1, c2,
# c3@localhost, AMQP 127.0.0.1:5681-5683, guest/guest, rabbitmq_amqp1_0 only; files in
# /var/tmp/claws-cluster), started if needed and left running. scripts/cluster does the work (the
# tests call it too, to kill and restart nodes); this runs `scripts/cluster up`, which is idempotent
# and fails loudly, with the node's log, when a node does not come up within 120 s.
# Sourced by scripts/provision (uses its `log`; RabbitMQ itself was installed there).
"$(dirname "$0")/cluster" up
log "RabbitMQ cluster ready at 127.0.0.1:5681-5683 (scripts/cluster status)"
