//! The RabbitMQ (AMQP 0-9-1) claw for claws, on lapin. (in progress)
