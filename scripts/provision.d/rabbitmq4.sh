# The RabbitMQ 4 tests (issue 20): two RabbitMQ 4 nodes in chroots beside the other nodes,
# loopback only, each with RabbitMQ 4.3's defaults (transient non-exclusive queues, global QoS,
# AMQP 1.0 v1 addresses, queue-master-locator and RAM nodes denied), guest/guest:
#   4.0  Debian 13's RabbitMQ 4.0.5, rmq4@localhost, AMQP 127.0.0.1:5690, AMQPS 5691,
#        files in /var/tmp/claws-rmq4
#   4.3  Debian unstable's RabbitMQ 4.3, rmq43@localhost, AMQP 127.0.0.1:5694, AMQPS 5695,
#        files in /var/tmp/claws-rmq43
# scripts/rabbitmq4 does the work (RMQ4_RELEASE selects the node; the tests call it too); `up`
# creates the chroot when missing (installs debootstrap, about a minute), starts the node if
# needed and waits for it (a few ms when already up), and fails loudly, with the relevant log,
# when it cannot.
# Sourced by scripts/provision (uses its `log`).
for release in 4.0 4.3; do
  r4=(env RMQ4_RELEASE="$release" "$(dirname "$0")/rabbitmq4")
  "${r4[@]}" up
  case $release in 4.0) amqp=5690 amqps=5691 ;; 4.3) amqp=5694 amqps=5695 ;; esac
  log "RabbitMQ $release ready at 127.0.0.1:$amqp (RMQ4_RELEASE=$release scripts/rabbitmq4 status)"
  # The user the test client certificate logs in as (EXTERNAL) on the node's TLS listener, as
  # amqp091-tls.sh adds it on the default node.
  # (the list read whole first: `grep -q` leaving a pipe early fails it under pipefail)
  users=$("${r4[@]}" ctl -q list_users 2>/dev/null || true)
  if ! grep -q '^claws-test-client' <<<"$users"; then
    log "adding the RabbitMQ $release user claws-test-client (certificate login only)"
    "${r4[@]}" ctl -q add_user claws-test-client "$(openssl rand -hex 16)" >/dev/null
    "${r4[@]}" ctl -q clear_password claws-test-client >/dev/null
    "${r4[@]}" ctl -q set_permissions -p / claws-test-client '.*' '.*' '.*' >/dev/null
  fi
  if ! timeout 10 openssl s_client -connect "127.0.0.1:$amqps" -CAfile /etc/rabbitmq/claws-tls/ca.pem \
    </dev/null >/dev/null 2>&1; then
    echo "error: the RabbitMQ $release node's TLS listener (127.0.0.1:$amqps) does not answer TLS" >&2
    exit 1
  fi
  log "RabbitMQ $release TLS listener ready at 127.0.0.1:$amqps"
done
