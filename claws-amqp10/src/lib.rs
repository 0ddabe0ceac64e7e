//! The AMQP 1.0 claw for claws, on fe2o3-amqp. (in progress)
