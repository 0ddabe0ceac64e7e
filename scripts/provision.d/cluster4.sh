# shellcheck shell=bash
# The RabbitMQ 4 cluster tests (issue 20): a 3-node RabbitMQ 4.0 cluster with RabbitMQ 4.3's
# defaults, in scripts/rabbitmq4's chroot, beside the other nodes, loopback only (r4c1, r4c2,
# r4c3@localhost, AMQP 0-9-1 and 1.0 on 127.0.0.1:5684-5686, guest/guest; files in
# /var/tmp/claws-rmq4/root/claws-cluster), started if needed and left running. scripts/cluster4
# does the work (the cluster tests call it too, with TEST_RABBITMQ=4, to kill and restart nodes);
# `up` first has scripts/rabbitmq4 create the chroot when it is missing (this step runs before
# rabbitmq4.sh), is idempotent (about 1 s when already up) and fails loudly, with the node's log,
# when a node does not come up within 120 s.
# Sourced by scripts/provision (uses its `log`).
"$(dirname "$0")/cluster4" up
log "RabbitMQ 4 cluster ready at 127.0.0.1:5684-5686 (scripts/cluster4 status)"
