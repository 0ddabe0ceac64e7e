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
# The user the test client certificate logs in as (EXTERNAL) on the 4 node's TLS listener
# (127.0.0.1:5691), as amqp091-tls.sh adds it on the default node.
r4=("$(dirname "$0")/rabbitmq4" ctl -q)
if ! "${r4[@]}" list_users 2>/dev/null | grep -q '^claws-test-client'; then
  log "adding the RabbitMQ 4 user claws-test-client (certificate login only)"
  "${r4[@]}" add_user claws-test-client "$(openssl rand -hex 16)" >/dev/null
  "${r4[@]}" clear_password claws-test-client >/dev/null
  "${r4[@]}" set_permissions -p / claws-test-client '.*' '.*' '.*' >/dev/null
fi
if ! timeout 10 openssl s_client -connect 127.0.0.1:5691 -CAfile /etc/rabbitmq/claws-tls/ca.pem \
  </dev/null >/dev/null 2>&1; then
  echo "error: the RabbitMQ 4 node's TLS listener (127.0.0.1:5691) does not answer TLS" >&2
  exit 1
fi
log "RabbitMQ 4 TLS listener ready at 127.0.0.1:5691"
