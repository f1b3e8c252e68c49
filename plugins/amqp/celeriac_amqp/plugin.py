"""Registration records of the AMQP transport and rpc backend (placeholder)."""
