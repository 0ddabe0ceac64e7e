# The RabbitMQ 4 tests (issue 20): Debian 13's RabbitMQ 4.0 in a chroot beside the other nodes,
# loopback only, with RabbitMQ 4.3's defaults (transient non-exclusive queues, global QoS, AMQP 1.0
# v1 addresses, queue-master-locator and RAM nodes denied): rmq4@localhost, AMQP 0-9-1 and 1.0 on
# 127.0.0.1:5690, guest/guest, files in /var/tmp/claws-rmq4. scripts/rabbitmq4 does the work (the
# tests call it too); `up` creates the chroot when missing (installs debootstrap, about a minute),
# starts the node if needed and waits for it (a few ms when already up), and fails loudly, with
# the relevant log, when it cannot.
# Sourced by scripts/provision (uses its `log`).
"$(dirname "$0")/rabbitmq4" up
log "RabbitMQ 4 ready at 127.0.0.1:5690 (scripts/rabbitmq4 status)"
